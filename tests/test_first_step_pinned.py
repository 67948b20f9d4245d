"""The first train step of each of the six methods, pinned to what the implementation gave before the engine
became streams and loss terms (issue 15), so that the redesign provably changes no method.

One fixed batch; the tiny small_cnn with dropout 0.5; view A the box's crop, view B its random distortion;
random crops and flips on; an eval-mode teacher from seed 100 (also the initialisation of a_then_b and
a_cqd). Every random draw of the step (crop, flip, both views, the A/B mix, dropout) thus shapes the pinned
numbers, so a change to how the step derives its keys fails here too. The step's loss terms, every gradient and the new BatchNorm statistics
must equal tests/data/first_step.npz (rtol 1e-5). Plain SGD (no momentum or weight decay) with a learning
rate of 1e4 makes the update 1e4 times the negative gradient, far above the parameters' float32 spacing, so
the gradients are read from the state the step returns.
The file was written by `python tests/test_first_step_pinned.py` at commit dbc13d7 (before the redesign);
writing it again to make a change pass would defeat it.
"""

import os
import sys

import jax
import numpy as np
import pytest

import helpers
from cqd_jax import degrade, methods, models, train

XLA_OPTIMIZED = True  # the pinned numbers were computed with XLA's default optimisations

PINNED = os.path.join(os.path.dirname(__file__), "data", "first_step.npz")
METHODS = ("train_a", "train_b", "a_then_b", "cqd", "a_cqd", "mixture_ab")
BATCH = 8
LR = 1e4


def first_step(name: str) -> dict[str, np.ndarray]:
  """Metrics, gradients (`grad/<path>`) and new BatchNorm statistics (`stats/<path>`) of `name`'s first step."""
  model = models.get_model("small_cnn", helpers.NUM_CLASSES, widths=helpers.WIDTHS, dropout_rate=0.5)
  view_a = degrade.make_view("crop", helpers.IMAGE_SIZE)
  view_b = degrade.make_view("crop+distort", helpers.IMAGE_SIZE)
  teacher = helpers.init_variables(model, seed=100)
  method = methods.get_method(name)
  tx, _ = train.make_optimizer(helpers.optimizer_config(lr=LR, end_lr=LR, momentum=0.0, weight_decay=0.0), 10)
  state = train.create_train_state(model, jax.random.key(0), helpers.IMAGE_SIZE, tx,
                                   teacher if method.stream(method.student).source else None)
  mesh = train.data_mesh()
  step = train.jit_one_model_step(mesh, method, model=model, view_a=view_a, view_b=view_b,
                                  image_size=helpers.IMAGE_SIZE, kd=helpers.kd_config(), flip=True, crop_margin=0.1)
  before = helpers.flatten(jax.device_get(state.params))  # the step donates the state's buffers
  state, metrics = step(state, {n: teacher for n in method.frozen},
                        train.shard_batch(helpers.tiny_batch(BATCH, seed=1), mesh))
  after = helpers.flatten(jax.device_get(state.params))
  out = {f"metric/{k}": np.asarray(v) for k, v in jax.device_get(metrics).items()}
  out.update({f"grad/{k}": (before[k] - after[k]) / np.float32(LR) for k in before})
  out.update({f"stats/{k}": v for k, v in helpers.flatten(jax.device_get(state.batch_stats)).items()})
  return out


@pytest.mark.parametrize("name", METHODS)
def test_first_step_is_unchanged(name):
  with np.load(PINNED) as pinned:
    expected = {k.split(":", 1)[1]: pinned[k] for k in pinned.files if k.startswith(f"{name}:")}
  got = first_step(name)
  assert set(got) == set(expected)
  for key, value in expected.items():
    scale = np.abs(value).max() if value.size else 0.0
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name} {key}")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  arrays = {f"{name}:{key}": value for name in METHODS for key, value in first_step(name).items()}
  os.makedirs(os.path.dirname(PINNED), exist_ok=True)
  np.savez_compressed(PINNED, **arrays)
  print(f"wrote {len(arrays)} arrays to {PINNED}", file=sys.stderr)
