"""The fused train step and evaluation.

One jit-compiled step takes a batch of stored (high-quality) images, augments them, builds the paired views
x = view_a(image) and z = view_b(image) on device, runs the frozen teacher on x (no gradient) and the student
forward/backward on its input, and applies the optax update: degradation, teacher logits and the
distillation loss are one XLA program. The batch is sharded over a 1-D device mesh ("data"), parameters are
replicated, so the same code runs data-parallel on any number of devices, of one process or several
(docs/scaling.md).
"""

import functools
from typing import Any, Callable, Iterable, Mapping

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cqd_jax import degrade
from cqd_jax import losses
from cqd_jax import models
from cqd_jax import methods
from cqd_jax.methods import Method

View = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
Variables = Mapping[str, Any]


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics, the stage's PRNG key and the count of skipped updates.

  Everything a step depends on is in the state, so a checkpoint of it resumes a run exactly.
  """

  batch_stats: Any
  rng: jax.Array  # raw key data (uint32) of the stage's key; step i uses fold_in(key, i)
  skipped: jax.Array  # int32: updates not applied because the loss or a gradient was not finite
  last_skipped: jax.Array  # int32: the latest such step (1-based, as checkpoints count), -1 if none

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables, without the adapters a method trains with it (they are not exported)."""
    params = {k: v for k, v in self.params.items() if k != ADAPTERS}
    return {"params": params, "batch_stats": self.batch_stats}


# The key of state.params under which a method's trainable adapters (models.ADAPTERS) keep their parameters.
ADAPTERS = "adapters"
# The key of train_step's `frozen` under which the views' networks (degrade.NETWORK_OPS) come.
VIEW_NETWORKS = "view_networks"


# ----------------------------------------------------------------------------------------------- optimizer

SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    # The paper: lr 1e-3 changing linearly to 5e-5 over training.
    "linear": lambda base_lr, end_lr, num_steps, warmup_steps: optax.join_schedules(
        [optax.linear_schedule(0.0, base_lr, warmup_steps),
         optax.linear_schedule(base_lr, end_lr, max(num_steps - warmup_steps, 1))], [warmup_steps]),
    "cosine": lambda base_lr, end_lr, num_steps, warmup_steps: optax.warmup_cosine_decay_schedule(
        0.0, base_lr, warmup_steps, max(num_steps, warmup_steps + 1), end_lr),
    "constant": lambda base_lr, end_lr, num_steps, warmup_steps: optax.constant_schedule(base_lr),
}

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, momentum, nesterov: optax.sgd(lr, momentum=momentum, nesterov=nesterov),
    "adam": lambda lr, momentum, nesterov: optax.adam(lr, b1=momentum),
}


def _registry_get(registry: Mapping[str, Any], name: str, key: str) -> Any:
  if name not in registry:
    raise ValueError(f"config key {key}={name!r} is not known; choose one of {sorted(registry)}")
  return registry[name]


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation,
                                                                           optax.Schedule]:
  """SGD/Adam with decoupled weight decay on kernels and a named learning-rate schedule (config.optimizer)."""
  schedule = _registry_get(SCHEDULES, opt.schedule, "optimizer.schedule")(
      opt.lr, opt.end_lr, num_steps, opt.warmup_steps)
  base = _registry_get(OPTIMIZERS, opt.name, "optimizer.name")(schedule, opt.momentum, opt.nesterov)
  kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=kernels_only), base), schedule


def create_train_state(model: nn.Module, rng: jax.Array, image_size: int, tx: optax.GradientTransformation,
                       variables: Variables | None = None, step_rng: jax.Array | None = None,
                       adapter_params: Mapping[str, Any] | None = None) -> TrainState:
  """Initialises the model from `rng`, or starts from a copy of `variables` (the step donates its state's
  buffers); `step_rng` (default: derived from `rng`) drives the augmentation and the views of every step.
  `adapter_params` (by term metric) train with the model, under params["adapters"]."""
  if variables is None:
    variables = models.init_variables(model, rng, image_size)
  else:
    variables = jax.tree.map(jnp.copy, variables)
  step_rng = jax.random.fold_in(rng, 1) if step_rng is None else step_rng
  params = dict(variables["params"])
  if adapter_params:
    params[ADAPTERS] = dict(adapter_params)
  return TrainState.create(apply_fn=model.apply, params=params,
                           batch_stats=variables.get("batch_stats", {}), tx=tx,
                           rng=jax.random.key_data(step_rng), skipped=jnp.zeros((), jnp.int32),
                           last_skipped=jnp.full((), -1, jnp.int32))


# ------------------------------------------------------------------------------------------------- augment

def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def flip_images(images: jax.Array, boxes: jax.Array, flip: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mirrors the examples where `flip` [N] is True; boxes (ymin, xmin, ymax, xmax) follow."""
  images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  flipped = jnp.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=-1)
  return images, jnp.where(flip[:, None], flipped, boxes)


def random_flip(images: jax.Array, boxes: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Horizontal flip of each example with probability 1/2; returns the images, boxes and the flip mask."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return *flip_images(images, boxes, flip), flip


def random_crop(images: jax.Array, boxes: jax.Array, rng: jax.Array, margin: float) -> tuple[jax.Array, jax.Array]:
  """Cuts a random part (up to `margin`) of each side's background outside the box, resized back.

  The object box always stays inside the crop, so both paired views (the crop and the degraded image) are
  made from the same augmented picture and the box stays right.
  """
  u = jax.random.uniform(rng, boxes.shape, minval=0.0, maxval=margin)
  window = jnp.stack([u[:, 0] * boxes[:, 0], u[:, 1] * boxes[:, 1],
                      1.0 - u[:, 2] * (1.0 - boxes[:, 2]), 1.0 - u[:, 3] * (1.0 - boxes[:, 3])], axis=-1)
  images, _ = degrade.crop(images, window, rng, size=images.shape[1])
  origin, extent = window[:, :2], window[:, 2:] - window[:, :2]
  new_boxes = jnp.concatenate([(boxes[:, :2] - origin) / extent, (boxes[:, 2:] - origin) / extent], axis=-1)
  return images, jnp.clip(new_boxes, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- train step

def _forward(apply_fn: Callable, variables: Variables, images: jax.Array, features: bool, **kwargs: Any
             ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """(logits, named features (empty unless `features`), updated mutable collections) of one network."""
  if features:
    return models.apply_with_features(apply_fn, variables, images, **kwargs)
  mutable = list(kwargs.pop("mutable", []))
  if mutable:
    logits, state = apply_fn(variables, images, mutable=mutable, **kwargs)
    return logits, {}, dict(state)
  return apply_fn(variables, images, **kwargs), {}, {}


def _outputs(name: str, logits: jax.Array, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  return {f"{name}.logits": logits, **{f"{name}.features.{k}": v for k, v in features.items()}}


def train_step(state: TrainState, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array], *, method: Method,
               views: Mapping[tuple[str, int], View], frozen_apply: Mapping[str, Callable[..., jax.Array]],
               adapters: Mapping[str, nn.Module], flip: bool,
               crop_margin: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step of `method` (methods.resolve'd), fused: augmentation, the views its streams read
  (`views[(view, size)]`, each made once), the frozen streams' forward passes (`frozen_apply[name]` on
  `frozen[name]`, eval mode, no gradient), the student's forward/backward, the sum of the weighted loss terms
  (through `adapters[term.metric]`, whose parameters are the state's params["adapters"]) and the update.
  An "image.<view>" input is that view at `method.image_size`, normalised. `frozen[VIEW_NETWORKS]` holds the
  variables of the networks a view reads (degrade.NETWORK_OPS, e.g. {"sr": ...}), arguments of the step.
  Metrics: "loss", "grad_norm", "skipped", "accuracy", each term's batch mean under its metric name, and
  "<frozen stream>_agreement" (top-1 agreement with the student).

  A frozen stream with `cache` reads its logits from `frozen[name]`, then a table [num_records, 2, K] of its
  logits on its view of every training record, unflipped and flipped (`teacher_logits_table`), indexed by the
  batch's "record"; its network does not run.
  An update whose loss or gradient is not finite is not applied (parameters, optimizer state and BatchNorm
  statistics stay as they were; the step counter advances past the batch) and is counted in the state.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  k_flip, k_a, k_b, k_mix = jax.random.split(rng, 4)
  images, boxes = to_float(batch["image"]), batch["bbox"]
  cached = {name for name in method.frozen if method.stream(name).cache}
  if crop_margin > 0:
    if cached:
      raise ValueError("cached teacher logits need a deterministic teacher input: augment.crop_margin must be 0")
    images, boxes = random_crop(images, boxes, jax.random.fold_in(k_flip, 1), crop_margin)
  flipped = jnp.zeros(images.shape[:1], bool)
  if flip:
    images, boxes, flipped = random_flip(images, boxes, k_flip)
  made: dict[tuple[str, int], jax.Array] = {}

  def view(letter: str, size: int) -> jax.Array:
    """The stream input `letter` at `size` px, made once per step (and per size) with the view's own key."""
    if (letter, size) not in made:
      if letter == "ab":
        pick_a = jax.random.bernoulli(k_mix, 0.5, (images.shape[0],))[:, None, None, None]
        made[letter, size] = jnp.where(pick_a, view("a", size), view("b", size))
      else:
        made[letter, size] = views[letter, size](images, boxes, k_a if letter == "a" else k_b,
                                                 frozen.get(VIEW_NETWORKS))[0]
    return made[letter, size]

  outputs = {"label": batch["label"]}
  for letter in method.images:
    outputs[f"image.{letter}"] = models.normalize_images(view(letter, method.image_size), jnp.float32)
  for name in method.frozen:  # eval mode, no gradient
    s = method.stream(name)
    if name in cached:
      outputs[f"{name}.logits"] = frozen[name][batch["record"], flipped.astype(jnp.int32)]
    else:
      logits, features, _ = _forward(frozen_apply[name], frozen[name], view(s.view, s.image_size),
                                     method.features(name), train=False)
      outputs.update(jax.lax.stop_gradient(_outputs(name, logits, features)))
  student = method.student
  s = method.stream(student)
  student_input = view(s.view, s.image_size)

  def loss_fn(params):
    model_params = {k: v for k, v in params.items() if k != ADAPTERS}
    logits, features, updates = _forward(
        state.apply_fn, {"params": model_params, "batch_stats": state.batch_stats}, student_input,
        method.features(student), train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(k_mix, 1)})
    out = {**outputs, **_outputs(student, logits, features)}
    aux = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == out["label"])}
    loss = 0.0
    for term in method.terms:
      args = [out[k] for k in term.inputs]
      if term.adapter:
        args[0] = adapters[term.metric].apply({"params": params[ADAPTERS][term.metric]}, args[0])
      aux[term.metric] = losses.TERMS[term.loss](*args, **dict(term.options)).mean()
      loss = loss + term.weight * aux[term.metric]
    for name in method.frozen:
      aux[f"{name}_agreement"] = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(out[f"{name}.logits"], -1))
    return loss, (aux, updates.get("batch_stats", {}))

  (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # the norm is not finite if any gradient is not
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  kept = lambda new, old: jnp.where(finite, new, old)
  state = updated.replace(
      params=jax.tree.map(kept, updated.params, state.params),
      opt_state=jax.tree.map(kept, updated.opt_state, state.opt_state),
      batch_stats=jax.tree.map(kept, updated.batch_stats, state.batch_stats),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      last_skipped=jnp.where(finite, state.last_skipped, updated.step))
  metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": state.skipped, **aux}
  return state, metrics


def teacher_logits_table(teacher_apply: Callable[..., jax.Array], teacher_variables: Variables, view_a: View,
                         batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, *, ynn_fusions: str = ""
                         ) -> np.ndarray:
  """The teacher's logits [num_records, 2, K] on view A of each record, as stored and mirrored.

  `batches` are ordered padded batches of the training split (input_pipeline.eval_batches); row i of the
  table belongs to record i. Computed once per teacher, it replaces the teacher's forward pass in every
  step when view A is deterministic and flipping is the only augmentation, so a long run saves most of the
  teacher's cost (one forward pass per image and step against two per image in all).
  """
  def both_flips(variables, batch):
    images, boxes = to_float(batch["image"]), batch["bbox"]
    out = []
    for flip in (False, True):
      flipped = flip_images(images, boxes, jnp.full(images.shape[:1], flip))
      out.append(teacher_apply(variables, view_a(*flipped, jax.random.key(0))[0], train=False))
    return jnp.stack(out, axis=1), batch["mask"]  # the global mask: each process's batch holds its rows only

  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  fn = jax.jit(both_flips, in_shardings=(replicated, data), out_shardings=replicated,
               compiler_options=compiler_options(ynn_fusions))
  variables = replicate(teacher_variables, mesh)
  rows = []
  for batch in batches:
    logits, mask = fn(variables, shard_batch(batch, mesh))
    rows.append(np.asarray(logits)[np.asarray(mask)])
  return np.concatenate(rows)


# -------------------------------------------------------------------------------------------------- eval

def _correct(logits: jax.Array, labels: jax.Array, **_) -> jax.Array:
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  """Top-1 accuracy of one model on both views of the same test images."""

  accuracy_a: clu_metrics.Average.from_fun(lambda logits_a, labels, **_: _correct(logits_a, labels))
  accuracy_b: clu_metrics.Average.from_fun(lambda logits_b, labels, **_: _correct(logits_b, labels))


def eval_step(variables: Variables, batch: Mapping[str, jax.Array], rng: jax.Array,
              view_networks: Mapping[str, Variables] | None = None, *, apply_fn: Callable, view_a: View, view_b: View
              ) -> EvalMetrics:
  """Accuracy on A and on B for one padded batch (`mask` marks real examples); `view_networks`: the variables
  of the networks the views read (train_step's frozen[VIEW_NETWORKS])."""
  images, boxes = to_float(batch["image"]), batch["bbox"]
  k_a, k_b = jax.random.split(rng)
  logits_a = apply_fn(variables, view_a(images, boxes, k_a, view_networks)[0], train=False)
  logits_b = apply_fn(variables, view_b(images, boxes, k_b, view_networks)[0], train=False)
  return EvalMetrics.single_from_model_output(logits_a=logits_a, logits_b=logits_b, labels=batch["label"],
                                              mask=batch["mask"])


# ------------------------------------------------------------------------------------------------ devices

def data_mesh() -> Mesh:
  """A 1-D mesh over all devices; the batch is split along its axis "data"."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_size(batch_size: int, key: str = "batch_size") -> None:
  """The global batch must split evenly over devices (and hosts)."""
  n = jax.device_count()
  if batch_size <= 0 or batch_size % n:
    raise ValueError(f"config key {key}={batch_size} must be a positive multiple of the device count ({n})")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this host's part of the batch on its devices as one global array per key."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (parameters, optimizer state) to every device of the mesh.

  With several processes each one passes the same values (they all start from the same seed or checkpoint)
  and fills its own devices: there jax.device_put would refuse arrays already placed on one local device, and
  compare every leaf across processes (a collective per leaf).
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global, e.g. the train state's
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, jnp.asarray(x))
  return jax.tree.map(leaf, tree)


# XLA:CPU's YNNPACK fusion kinds (xla_cpu_experimental_ynn_fusion_type), by config.xla_cpu_ynn_fusions names.
YNN_FUSIONS = ("dot", "reduce", "eltwise", "individual_dot", "individual_convolution")


def check_ynn_fusions(value: str, key: str = "xla_cpu_ynn_fusions") -> None:
  """ValueError naming `key` unless `value` is "" or comma-separated YNN_FUSIONS names."""
  unknown = [t for t in value.split(",") if t.strip() not in YNN_FUSIONS] if value else []
  if unknown:
    raise ValueError(f"config key {key}={value!r}: unknown fusion kind {unknown[0]!r}; known: "
                     f"{', '.join(YNN_FUSIONS)} (comma-separated), or '' for XLA's default")


@functools.cache
def compiler_options(ynn_fusions: str) -> dict[str, str]:
  """XLA compiler options for the jitted steps: on the CPU backend, the YNNPACK fusion kinds `ynn_fusions`
  ("" = XLA's default). Empty elsewhere, and (with a warning) where this jaxlib does not know the option:
  it is experimental, so it is tried once on a tiny program first."""
  if not ynn_fusions or jax.default_backend() != "cpu":
    return {}
  check_ynn_fusions(ynn_fusions)
  value = ",".join(f"LIBRARY_FUSION_TYPE_{t.strip().upper()}" for t in ynn_fusions.split(","))
  options = {"xla_cpu_experimental_ynn_fusion_type": value}
  try:
    jax.jit(lambda x: x @ x, compiler_options=options).lower(jnp.ones((2, 2))).compile()
  except Exception as e:  # pylint: disable=broad-except (jaxlib raises its own error types)
    logging.warning("XLA:CPU ignores xla_cpu_ynn_fusions=%r here (%s); using XLA's default fusions",
                    ynn_fusions, " ".join(str(e).split())[:200])
    return {}
  return options


def jit_train_step(mesh: Mesh, *, ynn_fusions: str = "", **static) -> Callable:
  """Compiles `train_step` for `mesh`, donating the old state's buffers (`ynn_fusions`: compiler_options)."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(functools.partial(train_step, **static), donate_argnums=(0,),
                 in_shardings=(replicated, replicated, data), out_shardings=(replicated, replicated),
                 compiler_options=compiler_options(ynn_fusions))


def jit_one_model_step(mesh: Mesh, method: Method, *, model: nn.Module, view_a: View, view_b: View, image_size: int,
                       kd: Mapping[str, Any] | None = None, cached: bool = False, **static) -> Callable:
  """`jit_train_step` for the common case of one architecture at one input size: every stream runs `model`,
  views A and B are given, KD's options are `kd` and `cached` caches the frozen streams' logits. The step
  takes (state, {frozen stream: variables or logits table}, batch); tests and benchmarks use it."""
  config = ml_collections.ConfigDict(dict(image_size=image_size, cache_teacher=cached, kd=dict(kd or {}),
                                          model={"name": model.__class__.__name__}, teacher_model={"name": ""}))
  resolved = methods.resolve(method, config)
  return jit_train_step(mesh, method=resolved, views={("a", image_size): view_a, ("b", image_size): view_b},
                        frozen_apply={} if cached else {n: model.apply for n in resolved.frozen}, adapters={},
                        **static)


def jit_eval_step(mesh: Mesh, *, ynn_fusions: str = "", **static) -> Callable:
  """Compiles `eval_step` for `mesh`."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(functools.partial(eval_step, **static), in_shardings=(replicated, data, replicated, replicated),
                 out_shardings=replicated, compiler_options=compiler_options(ynn_fusions))
