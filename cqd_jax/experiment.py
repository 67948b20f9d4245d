"""Runs a config's experiment: every method for every degradation, each a resumable stage with its own
checkpoints, after the stages it takes weights from (the teacher, train on A, once per high-quality view),
then the results table.

Workdir layout:
  config.json                  the config this workdir was started with
  data/                        TFDS data (when config.dataset.data_dir is empty)
  stages/<stage>/checkpoints/  Orbax steps of the stage (state + data iterator)
  stages/<stage>/result.json   written last, atomically: a stage with it is finished and skipped on re-run
  tensorboard/<stage>/         TensorBoard scalars
  results.csv, results.md      the table (method x test domain x degradation), each model's size and FLOPs
  timing.csv                   evaluation speed (images/s), which depends on the machine, not the config

With several processes (multihost.py) the workdir is shared by all hosts; each process trains on its own
shard of the training data and evaluates its own rows of each test batch, all take part in the Orbax
checkpoints, and process 0 alone writes config.json, result.json, TensorBoard and the tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
import zlib
from typing import Any, Callable

import jax
import ml_collections
import tqdm

from cqd_jax import checkpoint
from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import fileio
from cqd_jax import methods
from cqd_jax import input_pipeline
from cqd_jax import models
from cqd_jax import multihost
from cqd_jax import multires
from cqd_jax import pretrained
from cqd_jax import results
from cqd_jax import train
from cqd_jax import view_networks
from cqd_jax import writers
from cqd_jax.data import registry


@dataclasses.dataclass(frozen=True)
class Stage:
  """One model to train: `method` with high-quality view `view_a` and degraded view `view_b` (specs)."""

  name: str
  method: str
  view_a: str
  view_b: str
  sources: tuple[tuple[str, str], ...] = ()  # (method, stage) pairs: the stages it takes weights from
  shared: bool = False  # reads view A only, so every degradation with this view A uses it

  @property
  def dirname(self) -> str:
    """The stage's name as one path component (stages/<dirname>, tensorboard/<dirname>)."""
    return self.name.replace("/", "__")

  def source(self, method: str) -> str:
    """The stage whose network a stream with source `method` is."""
    return dict(self.sources)[method]


def plan(config: ml_collections.ConfigDict) -> list[Stage]:
  """Stages in run order: each method of config.methods for every degradation, after the stages it takes
  weights from (methods.Stream.source), each trained once. A stage whose method and sources read view A
  only (the teacher) does not depend on the degradation's B, so degradations with the same A share it
  (`<method>@<A>`, run first); the others are `<degradation>/<method>`."""
  known = methods.all_methods(config)
  active = functools.cache(lambda name: methods.active(known[name], config))

  def reads_b(name: str) -> bool:
    m = active(name)
    return any(s.view != "a" for _, s in m.streams) or any(reads_b(src) for src in m.sources)

  shared: dict[str, Stage] = {}
  own: dict[str, Stage] = {}

  def add(name: str, deg_name: str, deg) -> Stage:
    sources = tuple((src, add(src, deg_name, deg).name) for src in active(name).sources)
    if reads_b(name):
      stage = own.setdefault(f"{deg_name}/{name}", Stage(f"{deg_name}/{name}", name, deg.a, deg.b, sources))
    else:
      key = f"{name}@{deg.a.replace('+', '_')}"
      stage = shared.setdefault(key, Stage(key, name, deg.a, deg.a, sources, shared=True))
    return stage

  for deg_name, deg in config.degradations.items():
    for name in config.methods:
      add(name, deg_name, deg)
  return [*shared.values(), *own.values()]


def resolve(method: methods.Method, config: ml_collections.ConfigDict, known: dict[str, methods.Method],
            network: Callable[[str], Any]) -> methods.Method:
  """The method as a stage trains it: its active parts, methods.resolve'd, with its "auto" and "first"
  features picked from the traced shapes (`network(model section)` builds a stream's network)."""
  method = methods.resolve(methods.active(method, config), config, known)
  if any(i.endswith((".features.auto", ".features.first")) for t in method.terms for i in t.inputs):
    method = methods.pick_features(method, output_shapes(method, network))
  return method


def stage_dir(workdir: str, stage: Stage) -> str:
  """Where a stage keeps its checkpoints and result."""
  return os.path.join(workdir, "stages", stage.dirname)


@dataclasses.dataclass
class Data:
  """The prepared data set and what the models need to know about it."""

  builder: Any
  num_classes: int
  class_names: list[str]
  num_train: int  # images in the training split, which config.num_epochs counts passes over


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> Data:
  """Builds the TFDS data set if needed (the demo data is generated in a few seconds); with several processes
  process 0 builds it and the others then open it."""
  data_dir = os.path.expanduser(config.dataset.data_dir) if config.dataset.data_dir else os.path.join(workdir, "data")
  with multihost.primary_first("prepare_data"):
    builder = registry.prepare(config.dataset.name, data_dir,
                               manual_dir=os.path.expanduser(config.dataset.manual_dir) or None,
                               manual_dir_flag="--config.dataset.manual_dir", progress=config.progress_bar,
                               **config.dataset.options.to_dict())
  return Data(builder, input_pipeline.num_classes(builder), input_pipeline.class_names(builder),
              input_pipeline.num_examples(builder, "train"))


def make_model(config: ml_collections.ConfigDict, key: str, num_classes: int) -> Any:
  """The network of config section `key` (model, teacher_model, ...), computing in config.compute_dtype
  (parameters, BatchNorm statistics and logits stay float32)."""
  section = config[key]
  return models.get_model(section.name, num_classes, dtype=config.compute_dtype, **section.options.to_dict())


def _view(config: ml_collections.ConfigDict, spec: str, size: int | None = None):
  return degrade.make_view(spec, size or config.image_size, config.degrade_params.to_dict())


def say(message: str) -> None:
  """A progress line that does not break the progress bars (logging is kept for debugging); process 0's only."""
  if multihost.is_primary():
    tqdm.tqdm.write(message, file=sys.stderr)


def _stable_hash(text: str) -> int:
  """A per-stage seed offset that is the same in every process (unlike hash())."""
  return zlib.crc32(text.encode()) % 2**31


class Runner:
  """Trains and evaluates the stages of one experiment in one workdir."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, data: Data):
    self.config, self.workdir, self.data = config, workdir, data
    self.mesh = train.data_mesh()
    train.check_batch_size(config.batch_size)
    train.check_batch_size(config.eval_batch_size, "eval_batch_size")
    self.known = methods.all_methods(config)
    self.sources = {source for s in plan(config) for _, source in s.sources}  # stages later stages read
    self._networks: dict[str, Any] = {}
    self._methods: dict[str, methods.Method] = {}
    self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    self._eval_fns: dict[tuple[str, int, str, str], Any] = {}
    self._teacher_tables: dict[tuple[str, str, int], Any] = {}
    self.timing: list[dict[str, Any]] = []
    self.view_networks: dict[str, Any] = {}  # the networks the views read (view_networks.prepare)

  def stage_dir(self, stage: Stage) -> str:
    return stage_dir(self.workdir, stage)

  def method(self, stage: Stage) -> methods.Method:
    """The stage's method with the config's options, model sections and input sizes filled in."""
    if stage.method not in self._methods:
      self._methods[stage.method] = resolve(self.known[stage.method], self.config, self.known, self.network)
    return self._methods[stage.method]

  def _trained(self, stage: Stage) -> methods.Stream:
    method = self.method(stage)
    return method.stream(method.student)

  def _output_shapes(self, stage: Stage) -> dict[str, tuple[int, ...]]:
    """output_shapes of the stage's method, traced once; empty unless it has adapters (nothing else reads them)."""
    method = self.method(stage)
    if stage.method not in self._shapes:
      has_adapters = any(t.adapter for t in method.terms)
      self._shapes[stage.method] = output_shapes(method, self.network) if has_adapters else {}
    return self._shapes[stage.method]

  def network(self, model_key: str) -> Any:
    """The linen module of config section `model_key`, built once."""
    if model_key not in self._networks:
      self._networks[model_key] = make_model(self.config, model_key, self.data.num_classes)
    return self._networks[model_key]

  def model_key(self, stage: Stage) -> str:
    """The config section of the model a stage trains."""
    return self._trained(stage).model

  def inference_speeds(self, stages: list[Stage], trained: dict[str, Any]) -> dict[str, float]:
    """Evaluation-mode images/s of each stage's model at its input size (batch config.eval_batch_size), timed
    one after another; `trained` holds variables already in memory, the others are read back."""
    out = {}
    for stage in tqdm.tqdm(stages, desc="timing the models", unit="model", leave=False,
                           disable=not self.config.progress_bar or not multihost.is_primary()):
      variables = trained.get(stage.name) or self.final_variables(stage)
      model, size = self.student(stage)
      out[stage.name] = round(models.images_per_second(model, variables, size, self.config.eval_batch_size,
                                                       self.mesh, self.config.compare_seconds), 1)
    return out

  def student(self, stage: Stage) -> tuple[Any, int]:
    """The network a stage trains and its input size."""
    s = self._trained(stage)
    return self.network(s.model), s.image_size

  def length(self, stage: Stage) -> tuple[int, int]:
    """(steps, patience) of a stage. Every stage trains config_lib.num_steps of the config (num_steps, or
    num_epochs over the built training split), except a network later stages read (the teacher, the
    assistant): it trains for at most config.teacher_training's length (the same keys; both 0: the
    config's) and stops once validation accuracy has not improved for `patience` evaluations (0: never);
    later stages then read its best-validation checkpoint."""
    steps = config_lib.num_steps(self.config, self.config.batch_size, self.data.num_train)
    section = self.config.get("teacher_training")
    if stage.name not in self.sources or section is None:
      return steps, 0
    return config_lib.num_steps(section, self.config.batch_size, self.data.num_train, steps), section.patience

  def _template(self, stage: Stage, variables=None, *, init_from: str | None = None) -> train.TrainState:
    """A fresh train state: from `variables`, else from `init_from` (default: config.<model>.init_from),
    with the method's adapters freshly initialised."""
    tx, _ = train.make_optimizer(self.config.optimizer, self.length(stage)[0])  # the schedule spans the cap
    seed = jax.random.key(self.config.seed)
    rng = jax.random.fold_in(seed, _stable_hash(stage.name))  # initialisation
    step_rng = jax.random.fold_in(seed, 1 + _stable_hash(stage.name))  # augmentation and views, per step
    student = self._trained(stage)
    model = self.network(student.model)
    if variables is None:
      init_from = self.config[student.model].get("init_from", "") if init_from is None else init_from
      variables = pretrained.init_variables(model, rng, student.image_size, init_from)
    adapters = init_adapters(self.method(stage), self._output_shapes(stage), jax.random.fold_in(rng, 2))
    return train.create_train_state(model, rng, student.image_size, tx, variables, step_rng=step_rng,
                                    adapter_params=adapters)

  def _manager(self, stage: Stage):
    return checkpoint.make_manager(os.path.join(self.stage_dir(stage), "checkpoints"),
                                   save_every=self.config.checkpoint_every, keep=self.config.keep_checkpoints,
                                   track_best=bool(self.config.validation_split))

  def final_variables(self, stage: Stage) -> dict[str, Any]:
    """The trained model of a finished stage (without adapters), read back from its last checkpoint, or its
    best-validation one if it stops early (`length`)."""
    manager = self._manager(stage)
    step = manager.best_step() if self.length(stage)[1] else None
    state = checkpoint.restore_latest(manager, self._template(stage, init_from=""), step=step)  # tree shape only
    manager.close()
    if state is None:
      raise checkpoint.CheckpointError(f"stage {stage.name} has no checkpoint in {self.stage_dir(stage)}")
    return state.variables

  def _check_finite(self, stage: Stage, state: train.TrainState, manager) -> int:
    """The number of skipped non-finite updates; with on_nonfinite="stop", raises NonFiniteError if any."""
    skipped = int(jax.device_get(state.skipped))
    if skipped and self.config.on_nonfinite == "stop":
      manager.wait_until_finished()  # the checkpoint named below is complete on disk before the process exits
      good = manager.latest_step()
      where = (f"{manager.directory}/{good}" if good is not None
               else "none (re-running starts the stage from scratch)")
      raise checkpoint.NonFiniteError(
          f"stage {stage.name}: the loss or a gradient was not finite at step {int(jax.device_get(state.last_skipped))}"
          f" (the update was not applied); last good checkpoint: {where}. Lower optimizer.lr, or set "
          "on_nonfinite='skip' to skip such batches")
    return skipped

  def _views(self, stage: Stage, method: methods.Method) -> dict[tuple[str, int], Any]:
    """The view functions the streams read, by (view, input size); "ab" needs both."""
    specs = {"a": stage.view_a, "b": stage.view_b}
    out = {}
    for _, s in method.streams:
      for letter in ("a", "b") if s.view == "ab" else (s.view,):
        out[letter, s.image_size] = _view(self.config, specs[letter], s.image_size)
    for letter in method.images:
      out[letter, method.image_size] = _view(self.config, specs[letter], method.image_size)
    return out

  def train(self, stage: Stage, weights: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains `stage` for its `length`, resuming from its latest checkpoint; `weights` holds the trained
    variables of its source stages, by stage name.

    Returns its variables (the best-validation ones if it stops early) and a summary (steps trained, best
    validation step and accuracy, skipped updates). Each validation accuracy is appended to the stage's
    validation.json. SIGTERM or SIGINT saves a checkpoint and raises checkpoint.Preempted; the same call
    later resumes from it.
    """
    config, method = self.config, self.method(stage)
    num_steps, patience = self.length(stage)
    student = method.stream(method.student)
    init = weights[stage.source(student.source)] if student.source else None
    state = self._template(stage, init)
    loader = input_pipeline.train_loader(self.data.builder, "train",
                                         batch_size=config.batch_size // jax.process_count(),
                                         seed=config.seed, image_size=config.dataset.storage_size or None,
                                         worker_count=config.dataset.worker_count,
                                         cache_mb=config.dataset.cache_mb)
    data_iter = iter(loader)
    manager = self._manager(stage)
    restored = checkpoint.restore_latest(manager, state, data_iter)
    if restored is not None:
      state = restored
      say(f"stage {stage.name}: resuming from step {int(state.step)}")
    start = int(state.step)
    history_path = os.path.join(self.stage_dir(stage), "validation.json")
    history = [h for h in _read_json(history_path, []) if h["step"] <= start]
    state = train.replicate(state, self.mesh)
    views = self._views(stage, method)
    frozen, frozen_apply = {}, {}
    for name in method.frozen:
      s = method.stream(name)
      source = stage.source(s.source)
      if s.cache:
        frozen[name] = self._teacher_table(stage, source, weights[source], s, views[s.view, s.image_size])
      else:
        frozen[name], frozen_apply[name] = weights[source], self.network(s.model).apply
    if self.view_networks:
      frozen[train.VIEW_NETWORKS] = self.view_networks
    frozen = train.replicate(frozen, self.mesh)
    step_fn = train.jit_train_step(
        self.mesh, method=method, views=views, frozen_apply=frozen_apply,
        adapters=adapter_modules(method, self._output_shapes(stage)),
        flip=config.augment.flip, crop_margin=config.augment.crop_margin, ynn_fusions=config.xla_cpu_ynn_fusions)
    writer = (writers.MetricWriter(os.path.join(self.workdir, "tensorboard", stage.dirname),
                                   log=False) if multihost.is_primary() else writers.NullWriter())
    bar = tqdm.tqdm(total=num_steps, initial=start, desc=f"{stage.name:>22s}", unit="step",
                    dynamic_ncols=True, leave=True, disable=not config.progress_bar or not multihost.is_primary())
    t0, seen = time.time(), 0
    done = start
    last = start if _plateaued(history, patience) else num_steps  # stopped early before a preemption
    with _stop_signals() as received:
      for step in range(start, last):
        raw = next(data_iter)
        if step == 0:
          writer.write_images(0, self._example_views(views, raw))
        batch = train.shard_batch(raw, self.mesh)
        state, metrics = step_fn(state, frozen, batch)
        seen += config.batch_size
        bar.update(1)
        done = step + 1
        if done % config.log_every == 0 or done == num_steps:
          self._check_finite(stage, state, manager)
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          scalars["img_per_s"] = seen / (time.time() - t0)
          writer.write_scalars(done, scalars)
          bar.set_postfix(loss=f"{scalars['loss']:.3f}", acc=f"{scalars['accuracy']:.2f}",
                          ips=f"{scalars['img_per_s']:.0f}")
        stop = _stop_requested(received, done, config, num_steps)
        if stop or done == num_steps or manager.should_save(done):
          self._check_finite(stage, state, manager)
          val = self._validate(stage, state) if config.validation_split else None
          if val is not None:
            writer.write_scalars(done, val)
            history.append({"step": done, "accuracy": val[checkpoint.BEST_METRIC]})
            if multihost.is_primary():
              fileio.write_text(history_path, json.dumps(history))
          checkpoint.save(manager, done, jax.device_get(state), data_iter, metrics=val, force=True)
        if stop:  # also at the last step: the next stages must not start
          manager.wait_until_finished()
          bar.close()
          signum = received[0] if received else signal.SIGTERM
          by = signal.Signals(signum).name if received else "a signal to another process"
          raise checkpoint.Preempted(
              f"stage {stage.name}: stopped by {by} at step {done}; checkpoint {manager.directory}/{done} saved; "
              "run the same command again to resume", signum)
        if _plateaued(history, patience):
          break
    bar.close()
    skipped = self._check_finite(stage, state, manager)
    if start < done:
      elapsed = time.time() - t0
      say(f"stage {stage.name}: {done - start} steps in {elapsed:.1f}s ({seen / elapsed:.0f} img/s)"
          + (f", {skipped} non-finite updates skipped" if skipped else "")
          + (f"; stopped early: no better validation accuracy in the last {patience} evaluations" if done < num_steps
             else ""))
    manager.wait_until_finished()
    best = manager.best_step() if config.validation_split else None
    summary = {"skipped_updates": skipped, "steps_trained": int(state.step), "max_steps": num_steps,
               "best_step": best, "best_val_accuracy": _metric(manager, best)}
    variables = jax.device_get(state.variables)
    if patience:  # later stages and the results read the best-validation model
      variables = checkpoint.restore_latest(manager, self._template(stage, init_from=""), step=best).variables
    manager.close()
    writer.close()
    return variables, summary

  def _example_views(self, views: dict[tuple[str, int], Any], batch: dict[str, Any], n: int = 4
                     ) -> dict[str, Any]:
    """The first `n` images of a training batch as each stream sees them (before flips), for TensorBoard."""
    images, boxes = train.to_float(batch["image"][:n]), batch["bbox"][:n]
    return {f"views/{letter}_{size}px": jax.device_get(view(images, boxes, jax.random.key(0),
                                                            self.view_networks or None)[0])
            for (letter, size), view in views.items()}

  def _teacher_table(self, stage: Stage, source: str, variables: dict[str, Any], s: methods.Stream, view) -> Any:
    """A frozen stream's logits on its view of every training record, both flips (train.teacher_logits_table),
    computed once per source stage, view and input size (Stream.cache; config.cache_teacher)."""
    spec = stage.view_a if s.view == "a" else stage.view_b
    key = (source, spec, s.image_size)
    if key not in self._teacher_tables:
      t0 = time.time()
      batches = input_pipeline.eval_batches(self.data.builder, "train", batch_size=self.config.eval_batch_size,
                                            image_size=self.config.dataset.storage_size or None)
      self._teacher_tables[key] = train.teacher_logits_table(
          self.network(s.model).apply, variables, view, batches, self.mesh,
          ynn_fusions=self.config.xla_cpu_ynn_fusions)
      say(f"stage {stage.name}: cached the teacher's logits on {len(self._teacher_tables[key])} training images "
          f"(both flips) in {time.time() - t0:.1f}s")
    return self._teacher_tables[key]

  def _eval_fn(self, stage: Stage, view_b: str):
    """The jitted evaluation of a stage's model at its input size (compiled once per model, size and pair of
    views)."""
    s = self._trained(stage)
    key = (s.model, s.image_size, stage.view_a, view_b)
    if key not in self._eval_fns:
      self._eval_fns[key] = train.jit_eval_step(self.mesh, apply_fn=self.network(s.model).apply,
                                                view_a=_view(self.config, stage.view_a, s.image_size),
                                                view_b=_view(self.config, view_b, s.image_size),
                                                ynn_fusions=self.config.xla_cpu_ynn_fusions)
    return self._eval_fns[key]

  def evaluate(self, stage: Stage, variables: dict[str, Any], view_b: str, split: str | None = None
               ) -> dict[str, float]:
    """Top-1 accuracy of a stage's model on `split` (default config.eval_split), on view A and on `view_b`,
    both at the model's input size. Its speed goes to `self.timing`."""
    config = self.config
    eval_fn = self._eval_fn(stage, view_b)
    variables = train.replicate(variables, self.mesh)
    networks = train.replicate(self.view_networks, self.mesh) if self.view_networks else None
    total = None
    split = split or config.eval_split
    batches = input_pipeline.eval_batches(self.data.builder, split, batch_size=config.eval_batch_size,
                                          image_size=config.dataset.storage_size or None)
    t0 = time.time()
    for i, batch in enumerate(batches):
      m = eval_fn(variables, train.shard_batch(batch, self.mesh), jax.random.key(i), networks)
      total = m if total is None else total.merge(m)
    out = {k: float(v) for k, v in total.compute().items()}  # waits for the last batch
    seconds = time.time() - t0
    images = 2 * int(total.accuracy_a.count)  # both views
    self.timing.append({"stage": stage.name, "split": split, "view_b": view_b, "images": images,
                        "seconds": round(seconds, 3), "images_per_s": round(images / max(seconds, 1e-9), 1)})
    return out

  def _validate(self, stage: Stage, state: train.TrainState) -> dict[str, float]:
    """Accuracy on config.validation_split of the view the stage's model is for (A for the teacher, else B)."""
    acc = self.evaluate(stage, state.variables, stage.view_b, self.config.validation_split)
    return {checkpoint.BEST_METRIC: acc["accuracy_b"]}


def output_shapes(method: methods.Method, network: Callable[[str], Any], batch: int = 2
                  ) -> dict[str, tuple[int, ...]]:
  """The shape of every output a resolved method's terms can read ("<stream>.logits", "<stream>.features.<name>"),
  by tracing each stream's network (`network(model section)`, e.g. Runner.network; nothing is computed)."""
  out = {}
  for name, s in method.streams:
    logits, features = _traced_outputs(network(s.model), s.image_size, batch)
    out[f"{name}.logits"] = logits
    out.update({f"{name}.features.{k}": v for k, v in features.items()})
  for letter in method.images:
    out[f"image.{letter}"] = (batch, method.image_size, method.image_size, 3)
  return out


@functools.lru_cache(maxsize=64)
def _traced_outputs(model: Any, image_size: int, batch: int) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
  """The logits' and named features' shapes of `model` (a hashable linen module) at image_size px, traced
  once per (model, size): several methods and stages share their networks."""
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jax.numpy.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  logits, features, _ = jax.eval_shape(lambda v, x: models.apply_with_features(model, v, x, train=False),
                                       variables, images)
  return logits.shape, {k: v.shape for k, v in features.items()}


def adapter_modules(method: methods.Method, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """The adapter of each term that has one, by term metric, built for its target's shape (`shapes`: the
  method's output_shapes)."""
  return {t.metric: models.ADAPTERS[t.adapter](target=tuple(shapes[t.inputs[1]][1:]))
          for t in method.terms if t.adapter}


def init_adapters(method: methods.Method, shapes: dict[str, tuple[int, ...]], rng: jax.Array) -> dict[str, Any]:
  """Fresh parameters of the method's adapters, by term metric."""
  modules = adapter_modules(method, shapes)
  out = {}
  for i, t in enumerate(t for t in method.terms if t.adapter):
    x = jax.numpy.zeros(shapes[t.inputs[0]], jax.numpy.float32)
    out[t.metric] = jax.jit(modules[t.metric].init)(jax.random.fold_in(rng, i), x)["params"]
  return out


def _plateaued(history: list[dict[str, float]], patience: int) -> bool:
  """Whether the last `patience` validation accuracies (history: [{step, accuracy}]) are all below the best
  one before them, i.e. an early-stopped stage is done; never with patience 0."""
  if not patience or len(history) <= patience:
    return False
  accuracies = [h["accuracy"] for h in history]
  return max(accuracies[-patience:]) <= max(accuracies[:-patience])


def _read_json(path: str, default: Any) -> Any:
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _stop_requested(received: list[int], done: int, config: ml_collections.ConfigDict, num_steps: int) -> bool:
  """Whether to save and stop after step `done`: at once when a signal came, in a single process. The
  processes of a multi-host run must all stop after the same step, so there a signal to any of them is
  shared every log_every steps and at the last step (one small collective, where metrics are fetched anyway)."""
  if jax.process_count() == 1:
    return bool(received)
  if done % config.log_every and done != num_steps:
    return False
  return multihost.any_process(bool(received))


def _metric(manager, step: int | None) -> float | None:
  """The validation accuracy saved with `step`, if any."""
  if step is None:
    return None
  metrics = manager.metrics(step)
  return None if metrics is None else float(metrics[checkpoint.BEST_METRIC])


@contextlib.contextmanager
def _stop_signals():
  """Turns SIGTERM and SIGINT into a request (the yielded list gets the signal) so the training loop can save
  a checkpoint before stopping; a second SIGINT interrupts at once. No-op outside the main thread."""
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return

  def request(signum, frame):
    if received and signum == signal.SIGINT:
      raise KeyboardInterrupt
    received.append(signum)
    say(f"{signal.Signals(signum).name} received: saving a checkpoint, then stopping")

  previous = {s: signal.signal(s, request) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Runs (or resumes) every stage of `config` in `workdir` and writes the results table."""
  data = prepare_data(config, workdir)
  runner = Runner(config, workdir, data)
  runner.view_networks = view_networks.prepare(config, workdir, data.builder, say)
  stages = plan(config)
  by_name = {s.name: s for s in stages}
  trained: dict[str, dict[str, Any]] = {}
  rows = []
  for stage in stages:
    result_path = os.path.join(runner.stage_dir(stage), "result.json")
    if os.path.exists(result_path):
      say(f"stage {stage.name}: finished earlier, skipping")
      with open(result_path) as f:
        rows.extend(json.load(f))
      continue
    for _, source in stage.sources:
      if source not in trained:
        trained[source] = runner.final_variables(by_name[source])
    variables, summary = runner.train(stage, trained)
    if stage.name in runner.sources or config.get("compare"):  # the comparison times every model at the end
      trained[stage.name] = variables
    model, size = runner.student(stage)
    cost = {"params": models.count_params(variables), "flops_per_image": models.flops_per_image(model, variables, size),
            "model": config[runner.model_key(stage)].name, "input_px": size}
    stage_rows = []
    for deg_name, deg in config.degradations.items():
      if stage.name == f"{deg_name}/{stage.method}" or stage.shared and deg.a == stage.view_a:
        acc = runner.evaluate(stage, variables, deg.b)
        stage_rows.append({"degradation": deg_name, "method": stage.method, "stage": stage.name,
                           "accuracy_a": acc["accuracy_a"], "accuracy_b": acc["accuracy_b"], **summary, **cost})
    if multihost.is_primary():
      fileio.write_text(result_path, json.dumps(stage_rows, indent=2))
    rows.extend(stage_rows)
  if multihost.is_primary():
    shown = list(dict.fromkeys([*(s.method for s in stages if s.method not in config.methods), *config.methods]))
    curves = {s.name: curve for s in stages if s.name in runner.sources
              if (curve := _read_json(os.path.join(runner.stage_dir(s), "validation.json"), []))}
    results.write_tables(rows, list(config.degradations), shown, workdir,
                         tested_on_a={s.method for s in stages if s.shared}, curves=curves)
    results.write_timing(runner.timing, workdir)
    if any(m in config.methods for m in ("cqd_small", "cqd_to_small")):
      names = {"deep": config.model.name, "small": config[methods.model_key(methods.Stream("b", model="small_model"),
                                                                            config)].name}
      if names["deep"] == names["small"]:  # one architecture at two widths (the demo)
        names = {role: f"{name} ({role})" for role, name in names.items()}
      paper = config.get("paper", {}).get("results")
      results.write_compression(rows, names, workdir, paper and dict(paper))
  if config.get("compare"):
    speeds = runner.inference_speeds([s for s in stages if any(r["stage"] == s.name for r in rows)], trained)
    if multihost.is_primary():
      results.write_comparison(rows, list(config.methods), speeds, workdir, machine_name())
  if config.get("multires"):  # the multi-resolution model of the paper's Table 3, from the finished stages
    multires.write(runner, stages, trained)
  return rows


def machine_name() -> str:
  """What ran the models, for tables of measured speed: the accelerators (count and kind), else the CPU's
  model name and core count."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{jax.device_count()} x {device.device_kind}"
  cpu = "CPU"
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  return f"{cpu}, {os.cpu_count()} cores"
