"""configs/demo_small_student.py:64,16 from the command line, tiny: a frozen teacher on A at 64 px and a
student on B at 16 px input with a KD term and a feature term through a trainable pixel-shuffle adapter. It
trains end to end, its results table shows the student's FLOPs per image below the teacher's, and a run
SIGKILLed at step 3 resumes to exactly the uninterrupted run's state (adapter included) and results.
"""

import csv
import pathlib
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers

pytestmark = pytest.mark.slow

STUDENT_STAGE = "lowres__small_hint"
ARGS = [
    "--config=configs/demo_small_student.py:64,16",
    "--config.methods=('train_a','small_hint')",
    "--config.num_steps=4",
    "--config.log_every=2",
    "--config.checkpoint_every=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    f"--config.dataset.options.num_classes={helpers.NUM_CLASSES}",
    "--config.dataset.options.train_per_class=8",
    "--config.dataset.options.validation_per_class=2",
    "--config.dataset.options.test_per_class=5",
    "--config.progress_bar=False",
]

@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("small_student") / "work"
  result = helpers.run_cli_in_process([f"--workdir={workdir}", *ARGS])
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


def _state(workdir: pathlib.Path, stage: str) -> dict[str, np.ndarray]:
  state = ocp.StandardCheckpointer().restore(workdir / "stages" / stage / "checkpoints" / "4" / "state")
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state)}


def test_the_16px_student_costs_less_than_its_teacher(small_run):
  rows = {r["method"]: r for r in csv.DictReader((small_run / "results.csv").open())}
  assert set(rows) == {"train_a", "small_hint"}
  teacher, student = float(rows["train_a"]["flops_per_image"]), float(rows["small_hint"]["flops_per_image"])
  assert 0 < student < teacher / 8  # 16 px against 64 px: about 16 times fewer
  assert rows["train_a"]["params"] == rows["small_hint"]["params"]  # the adapter is not part of the model
  assert "| lowres/small_hint | small_hint |" in (small_run / "results.md").read_text()
  timing = list(csv.DictReader((small_run / "timing.csv").open()))
  assert {r["stage"] for r in timing} == {"train_a@crop", "lowres/small_hint"}
  assert all(float(r["images_per_s"]) > 0 for r in timing)
  assert any(k.startswith("['params']['adapters']['feature_mse']") for k in _state(small_run, STUDENT_STAGE))


def test_sigkill_then_resume_is_exact(small_run, tmp_path):
  workdir = tmp_path / "work"
  helpers.copy_run(small_run, workdir, drop=(STUDENT_STAGE,))
  first = workdir / "stages" / STUDENT_STAGE / "checkpoints" / "2"
  killed = helpers.run_cli(workdir, *ARGS, base=False,
                           main=("-c", helpers.signal_itself_script(3), str(int(signal.SIGKILL)), str(first)))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
  assert not (workdir / "stages" / STUDENT_STAGE / "result.json").exists()
  resumed = helpers.run_cli_in_process([f"--workdir={workdir}", *ARGS])
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert "stage lowres/small_hint: resuming from step 2" in resumed.stderr
  got, expected = _state(workdir, STUDENT_STAGE), _state(small_run, STUDENT_STAGE)
  assert got.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  assert (workdir / "results.csv").read_text() == (small_run / "results.csv").read_text()
