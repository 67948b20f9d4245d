"""Tests for cqd_jax.checkpoint: which steps are kept, and restoring into a different model is a clear error."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax import checkpoint


def _save_all(manager, accuracies, tree=lambda step: {"w": jnp.full((3,), step, jnp.float32)}):
  for step, acc in enumerate(accuracies, start=1):
    metrics = None if acc is None else {checkpoint.BEST_METRIC: acc}
    checkpoint.save(manager, step, tree(step), metrics=metrics)
  manager.wait_until_finished()


def _steps(directory) -> list[int]:
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def test_keeps_the_latest_k_and_the_best(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), save_every=1, keep=2, track_best=True)
  _save_all(manager, [0.5, 0.9, 0.4, 0.3, 0.2])
  assert _steps(tmp_path) == [2, 4, 5]
  assert manager.best_step() == 2 and manager.latest_step() == 5
  restored = checkpoint.restore_latest(manager, {"w": jnp.zeros((3,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], [5, 5, 5])
  manager.close()


def test_without_validation_keeps_the_latest_k(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), save_every=2, keep=3)
  saved = []
  for step in range(1, 11):
    if manager.should_save(step):
      checkpoint.save(manager, step, {"w": jnp.ones(2)})
      saved.append(step)
  manager.wait_until_finished()
  assert saved == [2, 4, 6, 8, 10]  # every save_every steps, not also the first step
  assert _steps(tmp_path) == [6, 8, 10]
  manager.close()


def test_restoring_another_model_names_the_checkpoint(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), save_every=1)
  _save_all(manager, [None])
  other = {"w": jnp.zeros((7,), jnp.float32), "head": jnp.zeros((2, 2))}  # another shape and another tree
  with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {tmp_path}/1 cannot be restored.*another "
                     "model/class count"):
    checkpoint.restore_latest(manager, other)
  manager.close()


def test_empty_directory_restores_nothing(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path / "new"), save_every=1)
  assert checkpoint.restore_latest(manager, {"w": jnp.zeros(1)}) is None
  manager.close()
