"""Tests for cqd_jax.train: the fused jitted train step for every method, teacher handling, augmentation,
optimizer/schedule, masked evaluation and batch-size checks (multi-device equality: test_multidevice.py)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from cqd_jax import degrade, losses, methods, models, train

BATCH = 8

# The built-in methods whose streams all read the model's input size (train.jit_one_model_step); the
# low-resolution ones run in tests/test_low_res_methods.py.
ONE_SIZE_METHODS = [n for n, m in methods.METHODS.items()
                    if all(s.scale == 1 and not s.image_size and s.model != "small_model" for _, s in m.streams)]


@pytest.fixture(scope="module")
def setup():
  model = helpers.tiny_model()
  view_a, view_b = helpers.views()
  teacher = helpers.init_variables(model, seed=100)
  batch = train.shard_batch(helpers.tiny_batch(BATCH, seed=1), train.data_mesh())
  return dict(model=model, view_a=view_a, view_b=view_b, teacher=teacher, batch=batch, mesh=train.data_mesh())


def _state(setup, method: methods.Method, seed: int = 0) -> train.TrainState:
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  init = setup["teacher"] if method.stream(method.student).source else None
  return train.create_train_state(setup["model"], jax.random.key(seed), helpers.IMAGE_SIZE, tx, init)


def _step_fn(setup, method: methods.Method, kd=None):
  """The jitted step, shared between tests (each compile costs seconds on a busy CPU)."""
  kd = kd or helpers.kd_config()
  key = (method, tuple(sorted(kd.items())))
  cache = setup.setdefault("step_fns", {})
  if key not in cache:
    cache[key] = helpers.tiny_step(method, setup["mesh"], model=setup["model"], kd=kd, flip=True)
  return cache[key]


def _frozen(setup, method: methods.Method, teacher=None) -> dict:
  """The teacher's variables as every frozen stream of `method`."""
  return {name: setup["teacher"] if teacher is None else teacher for name in method.frozen}


def _run_step(setup, name: str, kd=None, seed: int = 0):
  """One step of method `name` from a fresh state; returns (initial variables (numpy), new state, metrics)."""
  method = methods.get_method(name)
  state = _state(setup, method, seed)
  before = helpers.flatten(jax.device_get(state.variables))
  new_state, metrics = _step_fn(setup, method, kd)(state, _frozen(setup, method), setup["batch"])
  return before, new_state, metrics


def _max_abs_diff(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ---------------------------------------------------------------------------------------------- train step

@pytest.mark.parametrize("name", sorted(ONE_SIZE_METHODS))
def test_train_step_every_method(setup, name):
  before_variables, state, metrics = _run_step(setup, name)
  before = {k: v for k, v in before_variables.items() if k.startswith("['params']")}
  before = {k[len("['params']"):]: v for k, v in before.items()}
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  after = helpers.flatten(jax.device_get(state.params))
  assert _max_abs_diff(before, after) > 1e-6, "parameters did not change"
  method = methods.METHODS[name]
  if method.frozen:
    assert "distill" in metrics and np.isfinite(float(metrics["distill"]))
    assert "teacher_agreement" in metrics
    np.testing.assert_allclose(float(metrics["loss"]),
                               float(metrics["ce"]) + helpers.kd_config().weight * float(metrics["distill"]),
                               rtol=1e-5)
  else:
    assert "distill" not in metrics
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["ce"]), rtol=1e-6)
  if method.stream(method.student).source:
    # The student started from the teacher (so its first-step change is small compared with a fresh init).
    teacher = helpers.flatten(setup["teacher"]["params"])
    assert _max_abs_diff(before, teacher) == 0.0
  # BatchNorm statistics were updated by the training-mode forward pass.
  stats_before = {k: v for k, v in before_variables.items() if k.startswith("['batch_stats']")}
  stats_after = helpers.flatten(jax.device_get({"batch_stats": state.batch_stats}))
  assert stats_before and _max_abs_diff(stats_before, stats_after) > 1e-6


class InputSpy(nn.Module):
  """A student whose updated "batch statistic" is its training input itself, so the state after a step
  shows exactly which images it saw; logits are a linear map of the whole image (not mirror-symmetric)."""

  num_classes: int = helpers.NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    seen = self.variable("batch_stats", "seen", jnp.zeros, x.shape)
    if train:
      seen.value = x
    return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


def _views_of(setup, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
  """Views A and B of the setup batch's images, all mirrored or none (both views are deterministic)."""
  images, boxes = train.to_float(setup["batch"]["image"]), setup["batch"]["bbox"]
  images, boxes = train.flip_images(images, boxes, jnp.full(images.shape[:1], flipped))
  key = jax.random.key(0)
  return np.asarray(setup["view_a"](images, boxes, key)[0]), np.asarray(setup["view_b"](images, boxes, key)[0])


@pytest.mark.parametrize("name", sorted(ONE_SIZE_METHODS))
def test_each_method_trains_on_its_view_and_pairs_the_teachers(setup, name):
  """train_a's student sees view A; train_b, a_then_b, cqd and a_cqd see view B; mixture_ab sees each example
  in A or B, both in one batch. A distilling step's teacher sees view A of the same (equally flipped) images:
  its distillation term equals soft CE between the spy's logits on what it saw and the teacher's on A."""
  method = methods.get_method(name)
  spy = InputSpy()
  images = setup["batch"]["image"]
  variables = spy.init(jax.random.key(0), jnp.zeros(images.shape, jnp.float32), train=False)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(spy, jax.random.key(0), helpers.IMAGE_SIZE, tx, variables)
  params = jax.tree.map(np.asarray, state.params)
  teacher = setup["model"]
  step = helpers.tiny_step(method, setup["mesh"], model=teacher, flip=True)
  new_state, metrics = step(state, _frozen(setup, method), setup["batch"])
  seen = np.asarray(new_state.batch_stats["seen"])
  candidates = {(view, flipped): _views_of(setup, flipped)[view == "b"] for view in "ab" for flipped in (False, True)}
  matches = [[key for key, c in candidates.items() if np.abs(seen[i] - c[i]).max() < 1e-5] for i in range(len(seen))]
  assert all(len(m) == 1 for m in matches), matches  # each example is exactly one view, one flip
  views = {m[0][0] for m in matches}
  assert views == {"a": {"a"}, "b": {"b"}, "ab": {"a", "b"}}[method.stream(method.student).view], (name, matches)
  assert {m[0][1] for m in matches} == {False, True}  # the flips are random per example
  if method.frozen:
    flips = jnp.asarray([m[0][1] for m in matches])
    x = np.where(np.asarray(flips)[:, None, None, None], *(_views_of(setup, f)[0] for f in (True, False)))
    teacher_logits = teacher.apply(setup["teacher"], x, train=False)
    student_logits = spy.apply({"params": params, "batch_stats": variables["batch_stats"]}, seen, train=False)
    expected = losses.soft_cross_entropy(student_logits, teacher_logits, temperature=helpers.kd_config().temperature)
    np.testing.assert_allclose(float(metrics["distill"]), float(expected.mean()), rtol=1e-5)


def test_cqd_step_with_a_model_without_batchnorm(setup):
  model = models.VGG(num_classes=helpers.NUM_CLASSES, layers=(8, "M", 8, "M"), fc_width=16)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(model, jax.random.key(0), helpers.IMAGE_SIZE, tx, None)
  teacher = helpers.init_variables(model, seed=100)
  assert set(teacher) == {"params"} and not state.batch_stats
  step = helpers.tiny_step(methods.get_method("cqd"), setup["mesh"], model=model, flip=True)
  new_state, metrics = step(state, {"teacher": teacher}, setup["batch"])
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["distill"]))


def test_non_finite_update_is_skipped_and_counted(setup):
  before, state, metrics = _run_step(setup, "cqd", kd=helpers.kd_config(weight=float("inf")))
  assert not np.isfinite(float(metrics["loss"]))
  after = helpers.flatten(jax.device_get(state.variables))
  assert _max_abs_diff(before, after) == 0.0, "a non-finite update changed parameters or BatchNorm statistics"
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.opt_state)))
  assert (int(state.step), int(state.skipped), int(state.last_skipped)) == (1, 1, 1)
  assert int(metrics["skipped"]) == 1
  _, good, _ = _run_step(setup, "cqd")
  assert (int(good.skipped), int(good.last_skipped)) == (0, -1)


def test_step_key_lives_in_the_state(setup):
  """The augmentation and views depend on the state's key only, so a checkpointed state resumes exactly."""
  method = methods.get_method("train_b")
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  make = lambda init_seed, step_seed: train.create_train_state(
      setup["model"], jax.random.key(init_seed), helpers.IMAGE_SIZE, tx, step_rng=jax.random.key(step_seed))
  step = _step_fn(setup, method)
  loss = lambda state: float(step(state, {}, setup["batch"])[1]["loss"])
  assert make(0, 5).rng.dtype == jnp.uint32
  np.testing.assert_array_equal(loss(make(0, 5)), loss(make(0, 5)))
  assert loss(make(0, 5)) != loss(make(0, 6))


def test_cqd_distill_term_is_additive(setup):
  _, state_b, metrics_b = _run_step(setup, "train_b")
  _, state_0, metrics_0 = _run_step(setup, "cqd", kd=helpers.kd_config(weight=0.0))
  _, state_w, metrics_w = _run_step(setup, "cqd", kd=helpers.kd_config(weight=10.0))
  # Same state, batch and rng: with weight 0 the cqd step is exactly the train_b step.
  np.testing.assert_allclose(float(metrics_0["loss"]), float(metrics_b["loss"]), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(metrics_0["ce"]), float(metrics_b["ce"]), rtol=1e-6, atol=1e-7)
  assert float(metrics_0["distill"]) > 0
  params_b, params_0 = helpers.flatten(jax.device_get(state_b.params)), helpers.flatten(jax.device_get(state_0.params))
  assert _max_abs_diff(params_b, params_0) < 1e-6
  # With weight > 0 the distillation term changes loss and update.
  np.testing.assert_allclose(float(metrics_w["ce"]), float(metrics_b["ce"]), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(metrics_w["loss"]), float(metrics_b["loss"]) + 10.0 * float(metrics_w["distill"]),
                             rtol=1e-5)
  assert float(metrics_w["loss"]) > float(metrics_b["loss"]) + 1e-3
  assert _max_abs_diff(params_b, helpers.flatten(jax.device_get(state_w.params))) > 1e-6


@pytest.mark.parametrize("loss", ["rkd_distance", "rkd_angle"])
def test_relational_distill_losses_train(setup, loss):
  """config.kd.loss picks RKD's batch-structure losses on the logits: the step adds them like KD."""
  _, _, metrics_b = _run_step(setup, "train_b")
  _, state, metrics = _run_step(setup, "cqd", kd=helpers.kd_config(loss=loss, weight=10.0))
  assert float(metrics["distill"]) > 0 and np.isfinite(float(metrics["grad_norm"]))
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics_b["loss"]) + 10.0 * float(metrics["distill"]),
                             rtol=1e-5)
  assert int(state.skipped) == 0


def test_a_new_method_is_one_entry(setup):
  """A method is data: CQD plus RKD's angle term between the logits, written as one Method, trains with the
  sum of its three weighted terms, each in the metrics under its own name."""
  cqd = methods.get_method("cqd")
  rkd = methods.Term("rkd_angle", ("student.logits", "teacher.logits"), "rkd_angle", weight=2.0)
  method = methods.Method(cqd.streams, (*cqd.terms, rkd), "CQD plus RKD angles")
  step = helpers.tiny_step(method, setup["mesh"], model=setup["model"], flip=True)
  _, _, cqd_metrics = _run_step(setup, "cqd")
  _, metrics = step(_state(setup, method), _frozen(setup, method), setup["batch"])
  for key in ("ce", "distill", "teacher_agreement", "accuracy"):
    np.testing.assert_allclose(float(metrics[key]), float(cqd_metrics[key]), rtol=1e-6)
  assert float(metrics["rkd_angle"]) > 0
  np.testing.assert_allclose(float(metrics["loss"]), float(cqd_metrics["loss"]) + 2.0 * float(metrics["rkd_angle"]),
                             rtol=1e-5)


def test_teacher_gets_no_gradient_and_is_not_donated(setup):
  """a_cqd: the student starts as a copy of the teacher; the step donates the student state only."""
  method = methods.get_method("a_cqd")
  mesh = setup["mesh"]
  teacher = train.replicate(helpers.init_variables(setup["model"], seed=100), mesh)
  teacher_before = helpers.flatten(jax.device_get(teacher))
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.replicate(
      train.create_train_state(setup["model"], jax.random.key(0), helpers.IMAGE_SIZE, tx, teacher), mesh)
  step = _step_fn(setup, method)
  first = state
  for _ in range(2):
    state, metrics = step(state, {"teacher": teacher}, setup["batch"])
  assert int(state.step) == 2
  # The student state is donated (its old buffers are gone), so the teacher check below is meaningful: a
  # student sharing the teacher's buffers would have had them deleted (or the call rejected).
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(first.params))
  leaves = jax.tree.leaves(teacher)
  assert not any(leaf.is_deleted() for leaf in leaves), "the teacher's buffers were donated"
  teacher_after = helpers.flatten(jax.device_get(teacher))
  for k in teacher_before:
    np.testing.assert_array_equal(teacher_after[k], teacher_before[k])
  student = helpers.flatten(jax.device_get(state.variables))
  assert _max_abs_diff(student, teacher_before) > 1e-6
  assert np.isfinite(float(metrics["distill"]))


def test_cached_teacher_logits_give_the_live_teacher_step(setup):
  """A step reading the teacher's logits from its table (both flips) equals a step running the teacher."""
  method, mesh = methods.get_method("cqd"), setup["mesh"]
  raw = helpers.tiny_batch(BATCH, seed=1)
  ordered = [{**{k: v[i:i + 3] for k, v in raw.items()}, "mask": np.ones(3, bool)} for i in range(0, BATCH, 3)]
  last = {k: v[:2] for k, v in ordered[-1].items()}  # records 6 and 7, padded with one masked example
  ordered[-1] = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), v.dtype)]) for k, v in last.items()}
  table = train.teacher_logits_table(setup["model"].apply, setup["teacher"], setup["view_a"], ordered, mesh)
  assert table.shape == (BATCH, 2, helpers.NUM_CLASSES)
  assert np.abs(table[:, 0] - table[:, 1]).max() > 1e-4  # mirrored crops score differently
  cached_step = helpers.tiny_step(method, mesh, model=setup["model"], cached=True, flip=True)
  batch = train.shard_batch({**raw, "record": np.arange(BATCH, dtype=np.int32)}, mesh)
  live, live_metrics = _step_fn(setup, method)(_state(setup, method), _frozen(setup, method), setup["batch"])
  cached, cached_metrics = cached_step(_state(setup, method), train.replicate({"teacher": table}, mesh), batch)
  for key in ("loss", "distill", "teacher_agreement"):
    np.testing.assert_allclose(float(cached_metrics[key]), float(live_metrics[key]), rtol=1e-5)
  assert _max_abs_diff(helpers.flatten(jax.device_get(cached.params)),
                       helpers.flatten(jax.device_get(live.params))) < 1e-5


def test_bfloat16_compute_keeps_float32_parameters(setup):
  """compute_dtype=bfloat16: the networks compute in bfloat16, parameters and their updates stay float32."""
  method = methods.get_method("cqd")
  model = models.get_model("small_cnn", helpers.NUM_CLASSES, widths=helpers.WIDTHS, dtype="bfloat16")
  step = helpers.tiny_step(method, setup["mesh"], model=model, flip=True)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(model, jax.random.key(0), helpers.IMAGE_SIZE, tx)
  new_state, metrics = step(state, _frozen(setup, method), setup["batch"])
  _, _, metrics_f32 = _run_step(setup, "cqd")
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.batch_stats)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics_f32["loss"]), rtol=3e-2)
  assert float(metrics["loss"]) != float(metrics_f32["loss"])  # it did compute in another precision


def test_ynn_fusions_compile_option_trains_alike(setup):
  """xla_cpu_ynn_fusions reaches XLA:CPU as a per-program compiler option and changes speed, not results."""
  assert train.compiler_options("") == {}
  options = train.compiler_options("dot,reduce")
  assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  method = methods.get_method("cqd")
  step = helpers.tiny_step(method, setup["mesh"], model=setup["model"], flip=True, ynn_fusions="dot,reduce")
  state, base = _state(setup, method), _state(setup, method)
  reference = _step_fn(setup, method)
  for _ in range(2):
    state, metrics = step(state, _frozen(setup, method), setup["batch"])
    base, base_metrics = reference(base, _frozen(setup, method), setup["batch"])
    np.testing.assert_allclose(float(metrics["loss"]), float(base_metrics["loss"]), rtol=1e-5)
  assert _max_abs_diff(helpers.flatten(jax.device_get(state.params)),
                       helpers.flatten(jax.device_get(base.params))) < 1e-5
  with pytest.raises(ValueError, match="config key xla_cpu_ynn_fusions='dot,matmul'.*'matmul'"):
    train.check_ynn_fusions("dot,matmul")
  # The option reached the compiled program: without "reduce" XLA:CPU leaves the step's reductions out of
  # YNNPACK (here XLA's default fuses the same kinds as "dot,reduce", so the default cannot tell).
  dots = helpers.tiny_step(method, setup["mesh"], model=setup["model"], flip=True, ynn_fusions="dot")
  fusions = [len(re.findall(r"%ynn_fusion[.\d]* = ", fn.lower(_state(setup, method), _frozen(setup, method),
                                                                 setup["batch"]).compile().as_text()))
             for fn in (dots, step)]
  assert 0 < fusions[0] < fusions[1], fusions


# --------------------------------------------------------------------------------------------------- augment

def test_random_flip_moves_boxes_with_images():
  n = 32
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(n, 8, 10, 3)), jnp.float32)
  # Boxes in the left half: xmin in [0, 0.2], xmax in [0.25, 0.45].
  xmin = rng.uniform(0.0, 0.2, n)
  xmax = rng.uniform(0.25, 0.45, n)
  boxes = np.stack([np.full(n, 0.1), xmin, np.full(n, 0.9), xmax], axis=1).astype(np.float32)
  out_images, out_boxes, mask = train.random_flip(images, jnp.asarray(boxes), jax.random.key(0))
  out_images, out_boxes = np.asarray(out_images), np.asarray(out_boxes)
  flipped = np.array([np.array_equal(out_images[i], np.asarray(images[i])[:, ::-1]) for i in range(n)])
  unchanged = np.array([np.array_equal(out_images[i], np.asarray(images[i])) for i in range(n)])
  assert np.all(flipped ^ unchanged)
  np.testing.assert_array_equal(np.asarray(mask), flipped)
  assert 0 < flipped.sum() < n, "with 32 examples both outcomes should occur"
  np.testing.assert_allclose(out_boxes[unchanged], boxes[unchanged])
  # Flipped boxes are in the right half, mirrored: (ymin, 1 - xmax, ymax, 1 - xmin).
  fb = out_boxes[flipped]
  assert np.all(fb[:, 1] > 0.5) and np.all(fb[:, 3] > 0.5)
  assert np.all(fb[:, 1] < fb[:, 3])
  np.testing.assert_allclose(fb[:, 0], boxes[flipped, 0])
  np.testing.assert_allclose(fb[:, 2], boxes[flipped, 2])
  np.testing.assert_allclose(fb[:, 1], 1.0 - boxes[flipped, 3], rtol=1e-6)
  np.testing.assert_allclose(fb[:, 3], 1.0 - boxes[flipped, 1], rtol=1e-6)


def test_random_flip_then_crop_shows_the_same_object():
  """The crop of a flipped image at its flipped box is the mirror of the original crop."""
  n = 8
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.uniform(size=(n, 32, 32, 3)), jnp.float32)
  boxes = jnp.asarray(np.tile([0.25, 0.0, 0.75, 0.5], (n, 1)), jnp.float32)
  crop = degrade.make_view("crop", 16)
  key = jax.random.key(5)
  flipped_images, flipped_boxes, _ = train.random_flip(images, boxes, key)
  which = np.asarray(jax.random.bernoulli(key, 0.5, (n,)))  # the draw random_flip makes
  crops = np.asarray(crop(images, boxes, key)[0])
  flipped_crops = np.asarray(crop(flipped_images, flipped_boxes, key)[0])
  assert 0 < which.sum() < n
  np.testing.assert_allclose(flipped_crops[which], crops[which][:, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(flipped_crops[~which], crops[~which], atol=1e-6)


# ------------------------------------------------------------------------------------------------- optimizer

def test_linear_schedule_warmup_then_linear_to_end_lr():
  opt = helpers.optimizer_config(schedule="linear", lr=0.1, end_lr=0.01, warmup_steps=5, momentum=0.0,
                                 weight_decay=0.0)
  tx, schedule = train.make_optimizer(opt, num_steps=25)
  np.testing.assert_allclose(schedule(0), 0.0, atol=1e-8)
  np.testing.assert_allclose(schedule(5), 0.1, rtol=1e-6)
  np.testing.assert_allclose(schedule(15), 0.055, rtol=1e-5)
  np.testing.assert_allclose(schedule(25), 0.01, rtol=1e-5)
  np.testing.assert_allclose(schedule(100), 0.01, rtol=1e-5)
  lrs = np.array([float(schedule(i)) for i in range(5, 26)])
  assert np.all(np.diff(lrs) < 0)
  # The optimizer applies it: plain SGD on a gradient of ones moves by -lr(step).
  params = {"w": jnp.zeros((2, 2))}
  opt_state = tx.init(params)
  grads = {"w": jnp.ones((2, 2))}
  for i in range(25):
    updates, opt_state = tx.update(grads, opt_state, params)
    np.testing.assert_allclose(updates["w"], -float(schedule(i)), rtol=1e-5, atol=1e-8)


def test_linear_schedule_without_warmup_starts_at_lr():
  _, schedule = train.make_optimizer(helpers.optimizer_config(schedule="linear", lr=0.1, end_lr=0.01,
                                                              warmup_steps=0), num_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.1, 0.055, 0.01], rtol=1e-5)


def test_weight_decay_only_on_kernels():
  opt = helpers.optimizer_config(schedule="constant", lr=1.0, momentum=0.0, weight_decay=0.5)
  tx, _ = train.make_optimizer(opt, num_steps=10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.5)
  np.testing.assert_allclose(updates["bias"], 0.0)


@pytest.mark.parametrize("key,bad", [("name", "rmsprop_x"), ("schedule", "exponential_x")])
def test_make_optimizer_unknown_name(key, bad):
  with pytest.raises(ValueError, match=rf"optimizer\.{key}") as info:
    train.make_optimizer(helpers.optimizer_config(**{key: bad}), 10)
  assert bad in str(info.value)


# ------------------------------------------------------------------------------------------------------ eval

def test_eval_step_ignores_padded_examples():
  k = 3
  # A fake model that reads its logits off pixel (0, 0): the identity view keeps them (scaled by 1/255).
  apply_fn = lambda variables, x, train: x[:, 0, 0, :k] * variables["scale"]
  identity = degrade.make_view("identity", 4)
  images = np.zeros((8, 4, 4, 3), np.uint8)
  predictions = [0, 1, 2, 0, 1, 1, 1, 1]
  for i, p in enumerate(predictions):
    images[i, 0, 0, p] = 255
  labels = np.array([0, 1, 2, 1, 0, 0, 0, 0], np.int32)  # real: 3 of 4 correct; padding: all wrong
  mask = np.array([True] * 4 + [False] * 4)
  batch = {"image": images, "label": labels, "bbox": np.tile(np.float32([0, 0, 1, 1]), (8, 1)), "mask": mask}
  variables = {"scale": jnp.float32(1.0)}
  m = train.eval_step(variables, batch, jax.random.key(0), apply_fn=apply_fn, view_a=identity, view_b=identity)
  np.testing.assert_allclose(m.compute()["accuracy_a"], 0.75)
  np.testing.assert_allclose(m.compute()["accuracy_b"], 0.75)
  # Jitted over the mesh, and merged with a second batch whose padding is all correct.
  eval_fn = train.jit_eval_step(train.data_mesh(), apply_fn=apply_fn, view_a=identity, view_b=identity)
  batch2 = dict(batch, label=np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32),
                mask=np.array([True, True, False, False, False, False, False, False]))  # real: 1 of 2
  total = eval_fn(variables, train.shard_batch(batch, train.data_mesh()), jax.random.key(0), None)
  total = total.merge(eval_fn(variables, train.shard_batch(batch2, train.data_mesh()), jax.random.key(1), None))
  np.testing.assert_allclose(total.compute()["accuracy_a"], 4 / 6, rtol=1e-6)
  # accuracy_a comes from view A, accuracy_b from view B: in grayscale pixel (0, 0) has three equal values,
  # so the fake model predicts class 0 for every example (1 of the 4 real labels), against 3 of 4 on A.
  m = train.eval_step(variables, batch, jax.random.key(0), apply_fn=apply_fn, view_a=identity,
                      view_b=degrade.make_view("grayscale", 4))
  np.testing.assert_allclose([m.compute()["accuracy_a"], m.compute()["accuracy_b"]], [0.75, 0.25])


# --------------------------------------------------------------------------------------------------- devices

@pytest.mark.parametrize("bad", [0, -8])
def test_check_batch_size_rejects_non_positive(bad):
  with pytest.raises(ValueError, match="batch_size"):
    train.check_batch_size(bad)
  with pytest.raises(ValueError, match="eval_batch_size"):
    train.check_batch_size(bad, "eval_batch_size")


def test_check_batch_size_rejects_non_multiples(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  train.check_batch_size(8)
  with pytest.raises(ValueError, match=r"eval_batch_size=6.*\(4\)"):
    train.check_batch_size(6, "eval_batch_size")
  with pytest.raises(ValueError, match="batch_size=2"):
    train.check_batch_size(2)


def test_random_crop_keeps_the_box_on_the_object():
  """A white square on black: after the random crop its pixels are exactly those inside the new box."""
  n, s = 6, 48
  images = np.zeros((n, s, s, 3), np.float32)
  boxes = np.array([[0.25, 0.3, 0.6, 0.7]] * n, np.float32)
  images[:, 12:29, 14:34] = 1.0  # rows 0.25..0.6, cols 0.3..0.7 of 48 px (rounded to whole pixels)
  out, new = train.random_crop(jnp.asarray(images), jnp.asarray(boxes), jax.random.key(0), 0.5)
  out, new = np.asarray(out), np.asarray(new)
  assert out.shape == images.shape and np.all(new >= 0) and np.all(new <= 1)
  assert not np.allclose(new, boxes)  # something was cut
  area_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  area_after = (new[:, 2] - new[:, 0]) * (new[:, 3] - new[:, 1])
  assert np.all(area_after >= area_before - 1e-6)  # cropping can only enlarge the object
  for img, b in zip(out, new):
    y0, x0, y1, x1 = np.round(b * s).astype(int)
    inside = img[y0 + 1:y1 - 1, x0 + 1:x1 - 1, 0]
    outside = img[:, :, 0].copy()
    outside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 0
    assert inside.min() > 0.9 and outside.max() < 0.1


def test_random_crop_with_zero_margin_is_the_identity():
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  boxes = jnp.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
  out, new = train.random_crop(images, boxes, jax.random.key(2), 0.0)
  np.testing.assert_allclose(out, images, atol=1e-5)
  np.testing.assert_allclose(new, boxes, atol=1e-6)
