"""A run stopped at any moment resumes to exactly the parameters of an uninterrupted run.

Each test starts from a copy of the shared tiny run (conftest.tiny_run) without its distillation stage, so
only lowres/cqd trains (4 steps, checkpoints at 2 and 4). A process signals itself at step 3, just after the
step-2 checkpoint is complete: SIGKILL (no chance to clean up), SIGTERM and Ctrl-C (the run saves a checkpoint
of step 3 and exits with 128 + the signal number), or Ctrl-C twice (it stops at once, saving nothing more).
The signal comes from inside the process at a fixed step, so no test races the training. Re-running the
same command resumes, and every array of the final train state (parameters, BatchNorm statistics, optimizer
state, step, PRNG key) and the results table must equal the uninterrupted run's.
"""

import os
import pathlib
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
from cqd_jax import experiment

pytestmark = pytest.mark.slow

KILLED_STAGE = "lowres__cqd"
SIGNAL_STEP = 3

_SIGNAL_ITSELF = helpers.signal_itself_script(SIGNAL_STEP)


def _steps(workdir: pathlib.Path, stage: str = KILLED_STAGE) -> list[int]:
  """Complete checkpoint steps of a stage (Orbax renames a step's directory to its number when finished)."""
  directory = workdir / "stages" / stage / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _final_state(workdir: pathlib.Path, stage: str) -> dict:
  step = max(_steps(workdir, stage))
  assert step == 4
  state = ocp.StandardCheckpointer().restore(workdir / "stages" / stage / "checkpoints" / str(step) / "state")
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _signalled_run(tiny_run, tmp_path, *signums: int):
  """A copy of the tiny run without its cqd stage, run in a subprocess that signals itself at step 3."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work", drop=(KILLED_STAGE,))
  first = workdir / "stages" / KILLED_STAGE / "checkpoints" / str(SIGNAL_STEP - 1)
  result = helpers.run_cli(workdir, main=("-c", _SIGNAL_ITSELF, ",".join(map(str, signums)), str(first)))
  return workdir, result


def _assert_resumes_exactly(tiny_run, workdir: pathlib.Path, latest: int) -> None:
  assert not (workdir / "stages" / KILLED_STAGE / "result.json").exists()
  assert max(_steps(workdir)) == latest < 4, "the run finished before the signal: nothing was tested"
  result = helpers.run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
  assert result.returncode == 0, result.stderr[-4000:]
  assert "stage train_a@crop: finished earlier, skipping" in result.stderr
  assert f"stage lowres/cqd: resuming from step {latest}" in result.stderr
  for stage in helpers.STAGES:
    resumed, expected = _final_state(workdir, stage), _final_state(tiny_run.workdir, stage)
    assert resumed.keys() == expected.keys()
    for key in expected:
      np.testing.assert_array_equal(resumed[key], expected[key], err_msg=f"{stage}{key}")
  assert (workdir / "results.csv").read_text() == (tiny_run.workdir / "results.csv").read_text()


def test_sigkill_then_resume_is_bit_exact(tiny_run, tmp_path):
  workdir, result = _signalled_run(tiny_run, tmp_path, signal.SIGKILL)
  assert result.returncode == -signal.SIGKILL, result.stderr[-4000:]
  # The step-2 state differs from the end result, so the comparison after resuming is not vacuous.
  state2 = ocp.StandardCheckpointer().restore(workdir / "stages" / KILLED_STAGE / "checkpoints" / "2" / "state")
  final = _final_state(tiny_run.workdir, KILLED_STAGE)
  assert not np.array_equal(np.asarray(state2["params"]["head"]["kernel"]), final["['params']['head']['kernel']"])
  _assert_resumes_exactly(tiny_run, workdir, latest=2)


def _assert_stopped_with_checkpoint(result, workdir, signum) -> None:
  assert result.returncode == 128 + signum, result.stderr[-4000:]  # 143 for SIGTERM, 130 for Ctrl-C
  assert "Traceback" not in result.stderr
  assert _steps(workdir) == [2, SIGNAL_STEP], "the signal must save a checkpoint of the step it stopped at"
  assert (f"stage lowres/cqd: stopped by {signal.Signals(signum).name} at step {SIGNAL_STEP}; checkpoint "
          f"{workdir / 'stages' / KILLED_STAGE / 'checkpoints' / str(SIGNAL_STEP)} saved") in result.stderr


def test_sigterm_saves_a_checkpoint_then_resume_is_bit_exact(tiny_run, tmp_path):
  workdir, result = _signalled_run(tiny_run, tmp_path, signal.SIGTERM)
  _assert_stopped_with_checkpoint(result, workdir, signal.SIGTERM)
  _assert_resumes_exactly(tiny_run, workdir, latest=SIGNAL_STEP)


def test_ctrl_c_saves_a_checkpoint_then_resume_is_bit_exact(tiny_run, tmp_path, monkeypatch):
  """Ctrl-C (SIGINT) to this process, through the command line's entry point (the exit status it passes to
  the shell: 130); the subprocess tests above and below show the real process's exit."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work", drop=(KILLED_STAGE,))
  stop_requested = experiment._stop_requested  # pylint: disable=protected-access

  def ctrl_c_at_step(received, done, config, *rest):
    if done == SIGNAL_STEP:
      os.kill(os.getpid(), signal.SIGINT)  # the handler training installed takes it
    return stop_requested(received, done, config, *rest)

  monkeypatch.setattr(experiment, "_stop_requested", ctrl_c_at_step)
  result = helpers.run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
  monkeypatch.undo()
  _assert_stopped_with_checkpoint(result, workdir, signal.SIGINT)
  _assert_resumes_exactly(tiny_run, workdir, latest=SIGNAL_STEP)


def test_second_ctrl_c_stops_at_once(tiny_run, tmp_path):
  """The first Ctrl-C asks for a checkpoint; a second one, before it is written, ends the process there."""
  workdir, result = _signalled_run(tiny_run, tmp_path, signal.SIGINT, signal.SIGINT)
  assert result.returncode in (-signal.SIGINT, 128 + signal.SIGINT), result.stderr[-4000:]
  assert "KeyboardInterrupt" in result.stderr and "saving a checkpoint, then stopping" in result.stderr
  assert "stopped by SIGINT" not in result.stderr
  assert _steps(workdir) == [2]  # neither step 3's checkpoint nor step 4's
  assert not (workdir / "stages" / KILLED_STAGE / "result.json").exists()

