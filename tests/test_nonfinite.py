"""A diverging run never writes non-finite weights: it stops naming the step and the last good checkpoint,
or (on_nonfinite="skip") skips and counts such updates."""

import csv
import math
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

import helpers

# A learning rate this large makes the tiny model's logits overflow within a few steps.
DIVERGE = ["--config.optimizer.lr=1e30", "--config.methods=('train_a',)", "--config.num_steps=6"]


def _run(workdir, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "cqd_jax.main", f"--workdir={workdir}",
                         *helpers.cli_tiny_args(*DIVERGE, *extra)], cwd=helpers.REPO, env=helpers.subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def _saved_arrays(workdir):
  directory = workdir / "stages" / "train_a@crop" / "checkpoints"
  for step in (p for p in directory.iterdir() if p.name.isdigit()):
    state = ocp.StandardCheckpointer().restore(step / "state")
    yield from (np.asarray(leaf) for leaf in jax.tree.leaves(state))


def test_stop_names_the_step_and_writes_no_nan(tmp_path):
  workdir = tmp_path / "work"
  result = _run(workdir)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-4000:]
  [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert "stage train_a@crop: the loss or a gradient was not finite at step" in line, line
  assert "last good checkpoint:" in line and "on_nonfinite='skip'" in line, line
  assert not (workdir / "stages" / "train_a@crop" / "result.json").exists()
  assert all(np.all(np.isfinite(a)) for a in _saved_arrays(workdir) if a.dtype.kind == "f")


def test_skip_counts_and_finishes(tmp_path):
  workdir = tmp_path / "work"
  result = _run(workdir, "--config.on_nonfinite=skip")
  assert result.returncode == 0, result.stderr[-4000:]
  assert "non-finite updates skipped" in result.stderr
  with open(workdir / "results.csv", newline="") as f:
    [row] = list(csv.DictReader(f))
  assert int(row["skipped_updates"]) > 0
  assert not math.isnan(float(row["accuracy_a"]))
  arrays = list(_saved_arrays(workdir))
  assert arrays and all(np.all(np.isfinite(a)) for a in arrays if a.dtype.kind == "f")
