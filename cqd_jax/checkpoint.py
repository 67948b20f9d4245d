"""Orbax checkpoints of a training stage: the train state (parameters, BatchNorm statistics, optimizer
state, step, PRNG key) plus the grain iterator position.

Each stage has its own CheckpointManager directory. Orbax writes asynchronously and finalises a step
atomically (a temporary directory renamed when complete), so a run killed mid-save leaves no step that reads
as complete, and re-running resumes from the latest complete step. The latest `keep` steps are kept, plus the
one with the best validation accuracy when steps carry that metric. A later stage loads its teacher here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used (corrupt, or from another model or class count)."""


BEST_METRIC = "val_accuracy"


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint; the same command resumes it."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class NonFiniteError(RuntimeError):
  """The loss or a gradient was not finite (the update was not applied); names the last good checkpoint."""


def make_manager(directory: str, *, save_every: int, keep: int = 2, track_best: bool = False
                 ) -> ocp.CheckpointManager:
  """A manager for one stage: saves every `save_every` steps (not also the first step, as Orbax's default
  policy does) and keeps the last `keep` steps, plus (with `track_best`) the step with the highest
  `BEST_METRIC`; leftovers of interrupted saves are removed."""
  metric = lambda metrics: metrics[BEST_METRIC]
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if track_best:
    policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=metric, n=1, keep_checkpoints_without_metrics=False))
  saving = ocp.checkpoint_managers.AnySavePolicy([ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
                                                  ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=saving, preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=metric if track_best else None, best_mode="max", cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any | None = None, *,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
  """Saves `state` (and the data iterator position, and validation `metrics`) at `step` if due, or always
  with `force`. The save finishes in the background; `manager.wait_until_finished()` waits for it."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore_latest(manager: ocp.CheckpointManager, state: Any, data_iterator: Any | None = None, *,
                   step: int | None = None) -> Any | None:
  """Restores the latest complete step (or `step`, e.g. manager.best_step()) into the structure of `state`
  (and `data_iterator`, in place).

  Returns the restored state, or None when the directory holds no checkpoint yet.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  items = {"state": ocp.args.StandardRestore(state)}
  if data_iterator is not None:
    _check_process_count(os.path.join(manager.directory, str(step), "data"))
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  _silence_closed_loop_callbacks()
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addFilter(_orphaned_restore_task_errors)  # kept after a failure: the reports come late
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))["state"]
  except Exception as e:  # Orbax raises many types for unreadable or mismatched trees.
    raise CheckpointError(
        f"checkpoint {manager.directory}/{step} cannot be restored ({type(e).__name__}: {_first_line(e)}); "
        "it is corrupt or was written for another model/class count: delete it or use a fresh --workdir"
    ) from e
  asyncio_logger.removeFilter(_orphaned_restore_task_errors)
  return restored


def _check_process_count(data_dir: str) -> None:
  """Each process saves its own data iterator position (grain: process_<i>-of-<n>.json), so a step resumes
  only with the number of processes that wrote it."""
  counts = {int(m.group(1)) for name in (os.listdir(data_dir) if os.path.isdir(data_dir) else [])
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
  if counts and jax.process_count() not in counts:
    raise CheckpointError(
        f"checkpoint {os.path.dirname(data_dir)} was written by {max(counts)} processes and this run has "
        f"{jax.process_count()}: resume it with {max(counts)} processes, or use a fresh --workdir")


def _silence_closed_loop_callbacks() -> None:
  """When a restore fails, TensorStore reads still in flight call back into Orbax's closed asyncio loop and
  each prints an 'Event loop is closed' traceback; drop exactly those so the real error stays readable."""
  if getattr(sys.unraisablehook, "cqd_filtered", False):
    return

  def closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)

  previous_unraisable, previous_excepthook = sys.unraisablehook, sys.excepthook
  def unraisable(u):
    if not closed_loop(u.exc_value):
      previous_unraisable(u)

  def excepthook(t, v, tb):
    if not closed_loop(v):
      previous_excepthook(t, v, tb)

  unraisable.cqd_filtered = True
  sys.unraisablehook, sys.excepthook = unraisable, excepthook


def _orphaned_restore_task_errors(record: logging.LogRecord) -> bool:
  """False for asyncio's 'Task exception was never retrieved' report of Orbax's other array reads, which
  fail like the one already reported when a restore fails; True (keep) for every other record."""
  message = record.getMessage()
  return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else ""


def exit_at_once_on_failure(command: Callable[[], None]) -> None:
  """Runs a command line's `command`; when it fails (SystemExit with a non-zero code) the process exits at
  once: after a failed Orbax restore, TensorStore reads still in flight call back into a closed asyncio loop
  during interpreter shutdown and print "Event loop is closed" tracebacks. The filter in restore_latest
  catches those raised while running; a plain exit still let one through in 1 of 6 runs."""
  try:
    command()
  except SystemExit as e:
    if not e.code:
      raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(e.code if isinstance(e.code, int) else 1)
