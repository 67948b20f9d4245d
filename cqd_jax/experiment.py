"""Runs a config's experiment: the teacher (train on A) once per high-quality view, then every method for
every degradation, each a resumable stage with its own checkpoints, then the results table.

Workdir layout:
  config.json                  the config this workdir was started with
  data/                        TFDS data (when config.dataset.data_dir is empty)
  stages/<stage>/checkpoints/  Orbax steps of the stage (state + data iterator)
  stages/<stage>/result.json   written last, atomically: a stage with it is finished and skipped on re-run
  tensorboard/<stage>/         TensorBoard scalars
  results.csv, results.md      the table (method x test domain x degradation)

With several processes (multihost.py) the workdir is shared by all hosts; each process trains on its own
shard of the training data and evaluates its own rows of each test batch, all take part in the Orbax
checkpoints, and process 0 alone writes config.json, result.json, TensorBoard and the tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import zlib
from typing import Any

import jax
import ml_collections
import tqdm

from cqd_jax import checkpoint
from cqd_jax import degrade
from cqd_jax import fileio
from cqd_jax import input_pipeline
from cqd_jax import models
from cqd_jax import multihost
from cqd_jax import pretrained
from cqd_jax import results
from cqd_jax import train
from cqd_jax import writers
from cqd_jax.data import registry
from cqd_jax.methods import TEACHER_METHOD, get_method


@dataclasses.dataclass(frozen=True)
class Stage:
  """One model to train: `method` with high-quality view `view_a` and degraded view `view_b`."""

  name: str
  method: str
  view_a: str
  view_b: str
  teacher: str | None  # stage whose final model is the teacher / initialisation

  @property
  def dirname(self) -> str:
    """The stage's name as one path component (stages/<dirname>, tensorboard/<dirname>)."""
    return self.name.replace("/", "__")


def teacher_stage_name(view_a: str) -> str:
  return f"{TEACHER_METHOD}@{view_a.replace('+', '_')}"


def plan(config: ml_collections.ConfigDict) -> list[Stage]:
  """Stages in run order: each distinct teacher first, then the other methods of every degradation."""
  stages: dict[str, Stage] = {}
  for deg_name, deg in config.degradations.items():
    teacher = teacher_stage_name(deg.a)
    stages.setdefault(teacher, Stage(teacher, TEACHER_METHOD, deg.a, deg.a, None))
  for deg_name, deg in config.degradations.items():
    for method in config.methods:
      if method != TEACHER_METHOD:
        name = f"{deg_name}/{method}"
        stages[name] = Stage(name, method, deg.a, deg.b, teacher_stage_name(deg.a))
  return list(stages.values())


def stage_dir(workdir: str, stage: Stage) -> str:
  """Where a stage keeps its checkpoints and result."""
  return os.path.join(workdir, "stages", stage.dirname)


@dataclasses.dataclass
class Data:
  """The prepared data set and what the models need to know about it."""

  builder: Any
  num_classes: int
  class_names: list[str]


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> Data:
  """Builds the TFDS data set if needed (the demo data is generated in a few seconds); with several processes
  process 0 builds it and the others then open it."""
  data_dir = os.path.expanduser(config.dataset.data_dir) if config.dataset.data_dir else os.path.join(workdir, "data")
  with multihost.primary_first("prepare_data"):
    builder = registry.prepare(config.dataset.name, data_dir,
                               manual_dir=os.path.expanduser(config.dataset.manual_dir) or None,
                               **config.dataset.options.to_dict())
  return Data(builder, input_pipeline.num_classes(builder), input_pipeline.class_names(builder))


def make_models(config: ml_collections.ConfigDict, num_classes: int) -> tuple[Any, Any]:
  """The student and teacher networks of `config` (one module when config.teacher_model is empty), computing
  in config.compute_dtype (parameters, BatchNorm statistics and logits stay float32)."""
  make = lambda c: models.get_model(c.name, num_classes, dtype=config.compute_dtype, **c.options.to_dict())
  student = make(config.model)
  return student, make(config.teacher_model) if config.teacher_model.name else student


def _view(config: ml_collections.ConfigDict, spec: str):
  return degrade.make_view(spec, config.image_size, config.degrade_params.to_dict())


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
    self.student, self.teacher_model = make_models(config, data.num_classes)
    self._eval_fns: dict[tuple[bool, str, str], Any] = {}
    self._teacher_tables: dict[tuple[str | None, str], Any] = {}

  def stage_dir(self, stage: Stage) -> str:
    return stage_dir(self.workdir, stage)

  def _model_for(self, stage: Stage):
    return self.teacher_model if stage.method == TEACHER_METHOD else self.student

  def _template(self, stage: Stage, variables=None, *, init_from: str | None = None) -> train.TrainState:
    """A fresh train state: from `variables`, else from `init_from` (default: config.<model>.init_from)."""
    tx, _ = train.make_optimizer(self.config.optimizer, self.config.num_steps)
    seed = jax.random.key(self.config.seed)
    rng = jax.random.fold_in(seed, _stable_hash(stage.name))  # initialisation
    step_rng = jax.random.fold_in(seed, 1 + _stable_hash(stage.name))  # augmentation and views, per step
    model = self._model_for(stage)
    if variables is None:
      model_config = self.config.teacher_model if model is not self.student else self.config.model
      init_from = model_config.get("init_from", "") if init_from is None else init_from
      variables = pretrained.init_variables(model, rng, self.config.image_size, init_from)
    return train.create_train_state(model, rng, self.config.image_size, tx, variables, step_rng=step_rng)

  def _manager(self, stage: Stage):
    return checkpoint.make_manager(os.path.join(self.stage_dir(stage), "checkpoints"),
                                   save_every=self.config.checkpoint_every, keep=self.config.keep_checkpoints,
                                   track_best=bool(self.config.validation_split))

  def final_variables(self, stage: Stage) -> dict[str, Any]:
    """The trained model of a finished stage, read back from its last checkpoint."""
    manager = self._manager(stage)
    state = checkpoint.restore_latest(manager, self._template(stage, init_from=""))  # only the tree shape
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

  def train(self, stage: Stage, teacher: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains `stage` to config.num_steps, resuming from its latest checkpoint.

    Returns its variables and a summary (best validation step and accuracy, skipped updates). SIGTERM or
    SIGINT saves a checkpoint and raises checkpoint.Preempted; the same call later resumes from it.
    """
    config, method = self.config, get_method(stage.method)
    if method.init_from_teacher and self.teacher_model is not self.student:
      raise ValueError(f"config key methods: {stage.method} starts the student from the teacher, which needs "
                       "the same architecture (leave config.teacher_model empty)")
    state = self._template(stage, teacher if method.init_from_teacher else None)
    loader = input_pipeline.train_loader(self.data.builder, "train", batch_size=config.batch_size // jax.process_count(),
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
    state = train.replicate(state, self.mesh)
    cached = method.distill and config.distill.cache_teacher
    teacher_vars = None
    if method.distill:
      teacher_vars = train.replicate(self._teacher_table(stage, teacher) if cached else teacher, self.mesh)
    step_fn = train.jit_train_step(
        self.mesh, method=method, view_a=_view(config, stage.view_a), view_b=_view(config, stage.view_b),
        teacher_apply=self.teacher_model.apply if method.distill and not cached else None, distill=config.distill,
        flip=config.augment.flip, crop_margin=config.augment.crop_margin, ynn_fusions=config.xla_cpu_ynn_fusions)
    writer = (writers.MetricWriter(os.path.join(self.workdir, "tensorboard", stage.dirname),
                                   log=False) if multihost.is_primary() else writers.NullWriter())
    bar = tqdm.tqdm(total=config.num_steps, initial=start, desc=f"{stage.name:>22s}", unit="step",
                    dynamic_ncols=True, leave=True, disable=not config.progress_bar or not multihost.is_primary())
    t0, seen = time.time(), 0
    with _stop_signals() as received:
      for step in range(start, config.num_steps):
        batch = train.shard_batch(next(data_iter), self.mesh)
        state, metrics = step_fn(state, teacher_vars, batch)
        seen += config.batch_size
        bar.update(1)
        done = step + 1
        if done % config.log_every == 0 or done == config.num_steps:
          self._check_finite(stage, state, manager)
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          scalars["img_per_s"] = seen / (time.time() - t0)
          writer.write_scalars(done, scalars)
          bar.set_postfix(loss=f"{scalars['loss']:.3f}", acc=f"{scalars['accuracy']:.2f}",
                          ips=f"{scalars['img_per_s']:.0f}")
        stop = _stop_requested(received, done, config)
        if stop or done == config.num_steps or manager.should_save(done):
          self._check_finite(stage, state, manager)
          val = self._validate(stage, state) if config.validation_split else None
          if val is not None:
            writer.write_scalars(done, val)
          checkpoint.save(manager, done, jax.device_get(state), data_iter, metrics=val, force=True)
        if stop:  # also at the last step: the next stages must not start
          manager.wait_until_finished()
          bar.close()
          signum = received[0] if received else signal.SIGTERM
          by = signal.Signals(signum).name if received else "a signal to another process"
          raise checkpoint.Preempted(
              f"stage {stage.name}: stopped by {by} at step {done}; checkpoint {manager.directory}/{done} saved; "
              "run the same command again to resume", signum)
    bar.close()
    skipped = self._check_finite(stage, state, manager)
    if start < config.num_steps:
      elapsed = time.time() - t0
      say(f"stage {stage.name}: {config.num_steps - start} steps in {elapsed:.1f}s ({seen / elapsed:.0f} img/s)"
          + (f", {skipped} non-finite updates skipped" if skipped else ""))
    manager.wait_until_finished()
    best = manager.best_step() if config.validation_split else None
    summary = {"skipped_updates": skipped, "best_step": best,
               "best_val_accuracy": _metric(manager, best)}
    manager.close()
    writer.close()
    return jax.device_get(state.variables), summary

  def _teacher_table(self, stage: Stage, teacher: dict[str, Any]) -> Any:
    """The teacher's logits on view A of every training record, both flips (train.teacher_logits_table),
    computed once per teacher and view A (config.distill.cache_teacher)."""
    key = (stage.teacher, stage.view_a)
    if key not in self._teacher_tables:
      t0 = time.time()
      batches = input_pipeline.eval_batches(self.data.builder, "train", batch_size=self.config.eval_batch_size,
                                            image_size=self.config.dataset.storage_size or None)
      self._teacher_tables[key] = train.teacher_logits_table(
          self.teacher_model.apply, teacher, _view(self.config, stage.view_a), batches, self.mesh,
          ynn_fusions=self.config.xla_cpu_ynn_fusions)
      say(f"stage {stage.name}: cached the teacher's logits on {len(self._teacher_tables[key])} training images "
          f"(both flips) in {time.time() - t0:.1f}s")
    return self._teacher_tables[key]

  def _eval_fn(self, stage: Stage, view_b: str):
    """The jitted evaluation of a stage's model (compiled once per model and pair of views)."""
    key = (stage.method == TEACHER_METHOD, stage.view_a, view_b)
    if key not in self._eval_fns:
      self._eval_fns[key] = train.jit_eval_step(self.mesh, apply_fn=self._model_for(stage).apply,
                                                view_a=_view(self.config, stage.view_a),
                                                view_b=_view(self.config, view_b),
                                                ynn_fusions=self.config.xla_cpu_ynn_fusions)
    return self._eval_fns[key]

  def evaluate(self, stage: Stage, variables: dict[str, Any], view_b: str, split: str | None = None
               ) -> dict[str, float]:
    """Top-1 accuracy of a stage's model on `split` (default config.eval_split), on view A and on `view_b`."""
    config = self.config
    eval_fn = self._eval_fn(stage, view_b)
    variables = train.replicate(variables, self.mesh)
    total = None
    batches = input_pipeline.eval_batches(self.data.builder, split or config.eval_split,
                                          batch_size=config.eval_batch_size,
                                          image_size=config.dataset.storage_size or None)
    for i, batch in enumerate(batches):
      m = eval_fn(variables, train.shard_batch(batch, self.mesh), jax.random.key(i))
      total = m if total is None else total.merge(m)
    return {k: float(v) for k, v in total.compute().items()}

  def _validate(self, stage: Stage, state: train.TrainState) -> dict[str, float]:
    """Accuracy on config.validation_split of the view the stage's model is for (A for the teacher, else B)."""
    acc = self.evaluate(stage, state.variables, stage.view_b, self.config.validation_split)
    return {checkpoint.BEST_METRIC: acc["accuracy_b"]}


def _stop_requested(received: list[int], done: int, config: ml_collections.ConfigDict) -> bool:
  """Whether to save and stop after step `done`: at once when a signal came, in a single process. The
  processes of a multi-host run must all stop after the same step, so there a signal to any of them is
  shared every log_every steps and at the last step (one small collective, where metrics are fetched anyway)."""
  if jax.process_count() == 1:
    return bool(received)
  if done % config.log_every and done != config.num_steps:
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
  stages = plan(config)
  trained: dict[str, dict[str, Any]] = {}
  rows = []
  for stage in stages:
    result_path = os.path.join(runner.stage_dir(stage), "result.json")
    if os.path.exists(result_path):
      say(f"stage {stage.name}: finished earlier, skipping")
      with open(result_path) as f:
        rows.extend(json.load(f))
      continue
    teacher = None
    if stage.teacher:
      if stage.teacher not in trained:
        trained[stage.teacher] = runner.final_variables(next(s for s in stages if s.name == stage.teacher))
      teacher = trained[stage.teacher]
    variables, summary = runner.train(stage, teacher)
    if stage.method == TEACHER_METHOD:
      trained[stage.name] = variables
    stage_rows = []
    cost = {"params": models.count_params(variables),
            "flops_per_image": models.flops_per_image(runner._model_for(stage), variables, config.image_size)}
    for deg_name, deg in config.degradations.items():
      if stage.method == TEACHER_METHOD and deg.a == stage.view_a or stage.name.startswith(f"{deg_name}/"):
        acc = runner.evaluate(stage, variables, deg.b)
        stage_rows.append({"degradation": deg_name, "method": stage.method, "stage": stage.name,
                           "accuracy_a": acc["accuracy_a"], "accuracy_b": acc["accuracy_b"], **summary, **cost})
    if multihost.is_primary():
      fileio.write_text(result_path, json.dumps(stage_rows, indent=2))
    rows.extend(stage_rows)
  if multihost.is_primary():
    results.write_tables(rows, list(config.degradations), [m for m in config.methods], workdir)
  return rows
