"""The teacher's own training length: early stopping on validation within a cap, and its best-validation
checkpoint read by the later stages (also after a restart)."""

import json
import shutil

import numpy as np
import pytest

from cqd_jax import checkpoint
from cqd_jax import config_lib
from cqd_jax import experiment
from cqd_jax import writers
from tests import helpers

# Validation accuracy of the teacher by step (checkpoint_every=2): best at 4, then two evaluations below it.
TEACHER_CURVE = {2: 0.5, 4: 0.7, 6: 0.6, 8: 0.65, 10: 0.95}


def test_length_in_epochs_counts_the_built_training_split():
  config = helpers.tiny_experiment_config()
  config.num_epochs = 2.5
  config.teacher_training = dict(num_steps=0, num_epochs=0.0, patience=0)
  assert config_lib.num_steps(config, 16, 100) == 4  # an explicit num_steps wins
  config.num_steps = 0
  assert config_lib.num_steps(config, 16, 100) == 15  # floor(2.5 * 100 / 16)
  assert config_lib.num_steps(config, 16, 3) == 1  # at least one step
  assert config_lib.num_steps(config.teacher_training, 16, 100, 15) == 15  # both 0: the default
  config.num_epochs = 0.0
  with pytest.raises(config_lib.ConfigError, match="num_steps and num_epochs"):
    config_lib.validate(config)


def test_plateaued_counts_evaluations_since_the_best():
  curve = lambda *acc: [{"step": 2 * (i + 1), "accuracy": a} for i, a in enumerate(acc)]
  assert not experiment._plateaued(curve(0.5, 0.7, 0.6), 2)
  assert experiment._plateaued(curve(0.5, 0.7, 0.6, 0.7), 2)  # a tie is no improvement
  assert not experiment._plateaued(curve(0.5, 0.7, 0.6, 0.71), 2)
  assert not experiment._plateaued(curve(0.9, 0.1, 0.1, 0.1), 0)  # patience 0: a fixed length


def _run(workdir, monkeypatch):
  """The tiny run with the teacher capped at 10 epochs (20 steps of 16 of the 32 training images) and
  patience 2, the other stages 2 epochs (4 steps), validation scripted; returns the variables each stage was
  given, by stage and source."""
  def validate(self, stage, state):
    acc = TEACHER_CURVE[int(state.step)] if stage.name == "train_a@crop" else 0.5
    return {checkpoint.BEST_METRIC: acc}

  given = {}
  train = experiment.Runner.train

  def recording_train(self, stage, weights):
    given[stage.name] = dict(weights)
    return train(self, stage, weights)

  def recording_images(self, step, images):
    given.setdefault("images", []).append((step, {k: v.shape for k, v in images.items()}))

  monkeypatch.setattr(writers.MetricWriter, "write_images", recording_images)
  monkeypatch.setattr(experiment.Runner, "_validate", validate)
  monkeypatch.setattr(experiment.Runner, "train", recording_train)
  result = helpers.run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args(
      "--config.num_steps=0", "--config.num_epochs=2", "--config.teacher_training.num_epochs=10",
      "--config.teacher_training.patience=2",
      "--config.methods=('train_a','cqd')")])
  assert result.returncode == 0, result.stderr[-3000:]
  return given


def test_teacher_stops_early_and_later_stages_read_its_best_checkpoint(tmp_path, monkeypatch):
  workdir = tmp_path / "work"
  given = _run(workdir, monkeypatch)
  rows = {r["stage"]: r for r in json.loads((workdir / "stages/train_a@crop/result.json").read_text())}
  teacher = rows["train_a@crop"]
  assert (teacher["steps_trained"], teacher["max_steps"], teacher["best_step"]) == (8, 20, 4)
  assert [h["step"] for h in json.loads((workdir / "stages/train_a@crop/validation.json").read_text())] == [2, 4, 6, 8]
  cqd = json.loads((workdir / "stages/lowres__cqd/result.json").read_text())[0]
  assert (cqd["steps_trained"], cqd["max_steps"]) == (4, 4)  # the student keeps the config's length

  manager = checkpoint.make_manager(str(workdir / "stages/train_a@crop/checkpoints"), save_every=2, track_best=True)
  assert manager.best_step() == 4 and manager.latest_step() == 8
  manager.close()
  in_memory = helpers.flatten(given["lowres/cqd"]["train_a@crop"])
  # TensorBoard shows each stage's first inputs as its streams see them: the teacher view A, cqd A and B.
  assert given["images"] == [(0, {"views/a_32px": (4, 32, 32, 3)}),
                             (0, {"views/b_32px": (4, 32, 32, 3), "views/a_32px": (4, 32, 32, 3)})]

  # A restart that trains cqd again reads the teacher back from disk: its step-4 checkpoint, not step 8.
  shutil.rmtree(workdir / "stages/lowres__cqd")
  again = helpers.flatten(_run(workdir, monkeypatch)["lowres/cqd"]["train_a@crop"])
  assert in_memory.keys() == again.keys()
  for k in in_memory:
    np.testing.assert_array_equal(in_memory[k], again[k])
  md = (workdir / "results.md").read_text()
  assert "| train_a@crop | 8 | 20 | 4 | 70.0 | 4 |" in md and (workdir / "validation.png").exists()
