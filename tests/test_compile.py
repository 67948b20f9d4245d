"""A stage compiles its train step once and its evaluation once: every batch has the same shapes and dtypes,
so a recompilation (a changed static argument, a weakly typed scalar, a host-side shape change) is a bug that
costs seconds to minutes per step on real models."""

import functools

from cqd_jax import experiment
from cqd_jax import train

import helpers


def test_each_stage_compiles_its_step_and_evaluation_once(tmp_path, monkeypatch):
  compiled = {"train": [], "eval": []}

  def recording(kind, make):
    @functools.wraps(make)
    def wrapper(*args, **kwargs):
      fn = make(*args, **kwargs)
      compiled[kind].append(fn)
      return fn
    return wrapper

  monkeypatch.setattr(train, "jit_train_step", recording("train", train.jit_train_step))
  monkeypatch.setattr(train, "jit_eval_step", recording("eval", train.jit_eval_step))
  config = helpers.tiny_experiment_config()
  config.num_steps = 6  # checkpoints (and validation) at steps 2, 4 and 6, evaluation after each stage
  config.methods = ("train_a", "cqd")
  experiment.run(config, str(tmp_path / "w"))

  assert len(compiled["train"]) == 2  # one step function per stage: train_a@crop, lowres/cqd
  assert [fn._cache_size() for fn in compiled["train"]] == [1, 1]  # pylint: disable=protected-access
  # Evaluation functions are cached per (model, view A, view B): the teacher's on B, cqd's on B.
  assert compiled["eval"] and all(fn._cache_size() == 1 for fn in compiled["eval"])  # pylint: disable=protected-access
