"""A diverging run never writes non-finite weights: it stops naming the step and the last good checkpoint,
or (on_nonfinite="skip") skips and counts such updates.

Both runs go through the command line in this process (helpers.run_cli_in_process). The skipping run keeps
every checkpoint, and each holds the count and latest step of the skipped updates (TrainState.skipped,
last_skipped): they give, independently of the error message, the step the stopping run must name.
"""

import csv
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers

# A learning rate this large makes the tiny model's logits overflow within a few steps.
DIVERGE = ["--config.optimizer.lr=1e30", "--config.methods=('train_a',)", "--config.num_steps=6",
           "--config.keep_checkpoints=10"]
STAGE = "train_a@crop"


def _run(workdir, *extra: str) -> helpers.CliResult:
  return helpers.run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args(*DIVERGE, *extra)])


def _checkpoints(workdir) -> dict[int, dict]:
  """{step: restored train state} of every complete checkpoint of the stage."""
  directory = workdir / "stages" / STAGE / "checkpoints"
  return {int(p.name): ocp.StandardCheckpointer().restore(p / "state")
          for p in sorted(directory.iterdir()) if p.name.isdigit()}


def _assert_all_finite(states) -> None:
  arrays = [np.asarray(leaf) for state in states for leaf in jax.tree.leaves(state)]
  assert arrays and all(np.all(np.isfinite(a)) for a in arrays if a.dtype.kind == "f")


@pytest.fixture(scope="module")
def skipping(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("skip") / "work"
  result = _run(workdir, "--config.on_nonfinite=skip")
  return workdir, result, _checkpoints(workdir)


def test_skip_counts_and_finishes(skipping):
  workdir, result, states = skipping
  assert result.returncode == 0, result.stderr[-4000:]
  assert "non-finite updates skipped" in result.stderr
  with open(workdir / "results.csv", newline="") as f:
    [row] = list(csv.DictReader(f))
  assert int(row["skipped_updates"]) == int(states[6]["skipped"]) > 0
  assert not math.isnan(float(row["accuracy_a"]))
  assert sorted(states) == [2, 4, 6]
  _assert_all_finite(states.values())


def test_stop_names_the_step_and_writes_no_nan(skipping, tmp_path):
  _, _, skip_states = skipping
  # The stopping run checks after every log step (2, 4, 6): it stops at the first whose state has skipped
  # an update, naming that state's latest skipped step; its last good checkpoint is the step before.
  check = next(step for step, state in sorted(skip_states.items()) if int(state["skipped"]) > 0)
  bad_step = int(skip_states[check]["last_skipped"])
  assert check - 2 < bad_step <= check
  workdir = tmp_path / "work"
  result = _run(workdir)
  assert result.returncode == 1
  line = helpers.error_line(result)
  checkpoints = workdir / "stages" / STAGE / "checkpoints"
  good = f"{checkpoints}/{check - 2}" if check > 2 else "none (re-running starts the stage from scratch)"
  assert f"stage {STAGE}: the loss or a gradient was not finite at step {bad_step} " in line, line
  assert f"last good checkpoint: {good}." in line and "on_nonfinite='skip'" in line, line
  states = _checkpoints(workdir)
  assert sorted(states) == list(range(2, check, 2))  # nothing saved at or after the failing check
  assert all(int(s["skipped"]) == 0 for s in states.values())
  _assert_all_finite(states.values())
  assert not (workdir / "stages" / STAGE / "result.json").exists()
