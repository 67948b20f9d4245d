"""A run killed at any moment resumes to exactly the parameters of an uninterrupted run (subprocess tests).

Each test starts `python -m cqd_jax.main` on the tiny demo config, waits until the distillation stage has
written its first checkpoint, kills the process (SIGKILL: no chance to clean up; SIGTERM: the run saves a
checkpoint and exits with 128 + 15), re-runs the same command and compares every array of the final train
states (parameters, BatchNorm statistics, optimizer state, step, PRNG key) with an uninterrupted run.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers

TIMEOUT = 300
STEPS = 60
ARGS = [f"--config.num_steps={STEPS}", "--config.checkpoint_every=5", "--config.log_every=5",
        "--config.methods=('train_a','cqd')"]
STAGES = ("train_a@crop", "lowres__cqd")
KILLED_STAGE = "lowres__cqd"


def _command(workdir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "cqd_jax.main", f"--workdir={workdir}", *helpers.cli_tiny_args(*ARGS)]


def _run(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir), cwd=helpers.REPO, env=helpers.subprocess_env(), capture_output=True,
                        text=True, timeout=TIMEOUT)


def _steps(workdir: pathlib.Path, stage: str) -> list[int]:
  """Complete checkpoint steps of a stage (Orbax renames a step's directory to its number when finished)."""
  directory = workdir / "stages" / stage / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _final_state(workdir: pathlib.Path, stage: str) -> dict:
  step = max(_steps(workdir, stage))
  assert step == STEPS
  state = ocp.StandardCheckpointer().restore(workdir / "stages" / stage / "checkpoints" / str(step) / "state")
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "work"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


def _kill_after_first_checkpoint(workdir: pathlib.Path, signum: int) -> tuple[subprocess.CompletedProcess, int]:
  """Starts the run, sends `signum` once the killed stage has a checkpoint; returns the result and that step."""
  process = subprocess.Popen(_command(workdir), cwd=helpers.REPO, env=helpers.subprocess_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + TIMEOUT
  try:
    while not _steps(workdir, KILLED_STAGE):
      assert process.poll() is None, f"the run ended before a checkpoint: {process.communicate()[1][-4000:]}"
      assert time.time() < deadline, "no checkpoint appeared"
      time.sleep(0.01)
    first = _steps(workdir, KILLED_STAGE)[0]
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
  finally:
    process.kill()
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), first


def _assert_resumes_exactly(workdir: pathlib.Path, reference: pathlib.Path) -> None:
  assert not (workdir / "stages" / KILLED_STAGE / "result.json").exists()
  latest = max(_steps(workdir, KILLED_STAGE))
  assert latest < STEPS, "the run finished before the signal: nothing was tested"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "stage train_a@crop: finished earlier, skipping" in result.stderr
  assert f"stage lowres/cqd: resuming from step {latest}" in result.stderr
  for stage in STAGES:
    resumed, expected = _final_state(workdir, stage), _final_state(reference, stage)
    assert resumed.keys() == expected.keys()
    for key in expected:
      np.testing.assert_array_equal(resumed[key], expected[key], err_msg=f"{stage}{key}")
  assert (workdir / "results.csv").read_text() == (reference / "results.csv").read_text()


def test_sigkill_then_resume_is_bit_exact(tmp_path, reference):
  workdir = tmp_path / "work"
  result, _ = _kill_after_first_checkpoint(workdir, signal.SIGKILL)
  assert result.returncode == -signal.SIGKILL
  _assert_resumes_exactly(workdir, reference)


def test_sigterm_saves_a_checkpoint_then_resume_is_bit_exact(tmp_path, reference):
  workdir = tmp_path / "work"
  result, first = _kill_after_first_checkpoint(workdir, signal.SIGTERM)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-4000:]
  assert "Traceback" not in result.stderr
  last = max(_steps(workdir, KILLED_STAGE))
  assert last > first, "SIGTERM must save a checkpoint of the step it stopped at"
  assert (f"stage lowres/cqd: stopped by SIGTERM at step {last}; checkpoint "
          f"{workdir / 'stages' / KILLED_STAGE / 'checkpoints' / str(last)} saved") in result.stderr
  _assert_resumes_exactly(workdir, reference)
