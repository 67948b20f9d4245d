"""`python -m cqd_jax.tune`: a grid of distillation settings scored on the validation split, the teacher
trained once, finished points reused when the grid grows, and one-line errors for a bad grid."""

import csv
import json
import os

import ml_collections
import pytest

import helpers
from cqd_jax import config_lib
from cqd_jax import tune

TINY = helpers.cli_tiny_args("--config.methods=('train_a','train_b','cqd')",
                             "--config.dataset.options.validation_per_class=3")


def _tune(workdir, *args: str) -> helpers.CliResult:
  """`python -m cqd_jax.tune` in this process (helpers.run_cli_in_process)."""
  return helpers.run_cli_in_process([f"--workdir={workdir}", *TINY, *args], entry=tune.main)


def _config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"kd": {"temperature": 10.0, "weight": 200.0, "loss": "soft_ce",
                                                "t2_scale": False}, "seed": 0})


def test_parse_grid_converts_to_the_keys_type():
  grid = tune.parse_grid(["kd.temperature=1,2", "seed=0,1", "kd.loss=soft_ce,l2",
                          "kd.t2_scale=true,False"], _config())
  assert grid == [("kd.temperature", [1.0, 2.0]), ("seed", [0, 1]), ("kd.loss", ["soft_ce", "l2"]),
                  ("kd.t2_scale", [True, False])]
  assert isinstance(grid[0][1][0], float) and isinstance(grid[1][1][0], int)
  assert tune.point_name([("kd.temperature", 5.0), ("kd.weight", 12.5)]) == "temperature=5,weight=12.5"


@pytest.mark.parametrize("spec, message", [
    ("kd.nope=1", "config key kd.nope is missing"),
    ("seed=1.5", "'1.5' is not a valid int"),
    ("kd.t2_scale=yes", "'yes' is not a valid bool"),
    ("kd=1", "only number, string and bool keys"),
    ("kd.weight", "expected key=v1,v2"),
])
def test_parse_grid_errors_name_the_flag(spec, message):
  with pytest.raises(config_lib.ConfigError, match=f"--grid={spec!r}.*") as e:
    tune.parse_grid([spec], _config())
  assert message in str(e.value)


def test_tuning_without_a_validation_split_is_refused():
  config = _config()
  config.validation_split = ""
  with pytest.raises(config_lib.ConfigError, match="validation_split is empty"):
    tune.validation_config(config, ["cqd"])


def _rows(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# lambda = 1e300 overflows to inf in float32 on purpose: that point is meant to diverge.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_grid_on_validation_teacher_once_and_extension(tmp_path):
  workdir = tmp_path / "tune"
  first = _tune(workdir, "--grid=kd.temperature=1,10", "--grid=kd.weight=0")
  assert first.returncode == 0, first.stderr[-6000:]
  assert first.stderr.count("stage train_a@crop: 4 steps") == 1  # the shared teacher, trained once
  assert first.stderr.count("stage lowres/cqd: 4 steps") == 2
  assert "best for lowres/cqd: --config.kd.temperature=" in first.stdout
  # With lambda = 0 the temperature cannot matter: both points train the same student.
  rows = _rows(workdir / "tune.csv")
  assert [r["point"] for r in rows] == ["temperature=1,weight=0", "temperature=10,weight=0"]
  assert rows[0]["val_accuracy"] == rows[1]["val_accuracy"]

  # A larger grid: only the new points train, and the diverging lambda = 1e300 is a result, not the end.
  second = _tune(workdir, "--grid=kd.temperature=1,10", "--grid=kd.weight=0,50,1e300")
  assert second.returncode == 0, second.stderr[-6000:]
  assert "stage train_a@crop: 4 steps" not in second.stderr
  assert second.stderr.count("stage lowres/cqd: 4 steps") == 2
  assert second.stderr.count("diverged: stage lowres/cqd: the loss or a gradient was not finite") == 2
  rows = _rows(workdir / "tune.csv")
  assert {r["point"] for r in rows} == {f"temperature={t},weight={w}" for t in (1, 10) for w in (0, 50, "1e+300")}
  diverged = [r for r in rows if r["kd.weight"] == "1e+300"]
  assert [r["val_accuracy"] for r in diverged] == ["nan", "nan"]
  rows = [r for r in rows if r not in diverged]
  for r in rows:
    point = workdir / "points" / r["point"]
    config = json.loads((point / "config.json").read_text())
    # Scored on validation (4 classes x 3 images), never on test; the grid values reached the run.
    assert config["eval_split"] == "validation" and config["validation_split"] == ""
    assert config["kd"]["temperature"] == float(r["kd.temperature"])
    assert config["kd"]["weight"] == float(r["kd.weight"])
    assert abs(float(r["val_accuracy"]) * 12 - round(float(r["val_accuracy"]) * 12)) < 1e-4
    stored = json.loads((point / "stages" / "lowres__cqd" / "result.json").read_text())
    assert float(r["val_accuracy"]) == pytest.approx(stored[0]["accuracy_b"])
    teacher = point / "stages" / "train_a@crop"
    if float(r["kd.weight"]) == 0:  # a zero weight drops the KD term, and with it the teacher
      assert not os.path.lexists(teacher)
      continue
    assert teacher.is_symlink() and os.path.realpath(teacher) == str(workdir / "teacher" / "stages" / "train_a@crop")
  table = (workdir / "tune.md").read_text()
  assert "| kd.temperature | kd.weight | lowres/cqd |" in table
  assert table.count("**") == 2  # one best cell, never a diverged one
  assert table.count("| diverged |") == 2


def test_bad_grid_is_one_error_line(tmp_path):
  result = _tune(tmp_path / "w", "--grid=kd.temprature=1,2")
  assert result.returncode == 1
  assert "--grid='kd.temprature=1,2': config key kd.temprature is missing" in helpers.error_line(result)
  result = _tune(tmp_path / "w", "--grid=kd.weight=1", "--methods=train_a")
  assert "--methods: train_a is the teacher" in helpers.error_line(result)
  assert not (tmp_path / "w").exists()  # refused before the workdir is made
