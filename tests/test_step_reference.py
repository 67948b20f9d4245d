"""The fused train step and the optimizer against independent code that needs no torch.

- small_cnn written out in numpy (float64): a 3x3 convolution as nine shifted products, BatchNorm on the
  batch's statistics in training and on the running ones in evaluation, 2x2 max pooling, mean pooling and the
  dense head. The paired views are made by PIL (the crop of the box, and that crop bicubically down to 8 px
  and back), and the losses are their formulas: the first step's loss of train_a (CE of the student on view
  A), train_b (on view B) and cqd (CE on B plus lambda * soft CE against the eval-mode teacher on A) must be
  what the jitted step computes. Swapping the views, the teacher's mode or the loss terms breaks it.
- SGD with momentum and decoupled weight decay on kernels, from its update rule, against make_optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from flax import traverse_util

import helpers
from cqd_jax import methods, models, train

XLA_OPTIMIZED = True  # compares the compiled step's numbers with numpy's

BATCH = 8
MEAN, STD = np.array(models.IMAGENET_MEAN), np.array(models.IMAGENET_STD)


def _pil(image: np.ndarray, size: int, method, box=None) -> np.ndarray:
  """[H, W, C] float image resized by PIL, channel by channel, clipped to [0, 1] as every view is."""
  return np.clip(np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
      (size, size), method, box=box)) for c in range(image.shape[-1])], -1), 0.0, 1.0)


def _pil_views(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """View A (crop of the box, bilinear) and view B (that crop, bicubic down to 8 px and back up)."""
  xs, zs = [], []
  for image, (y0, x0, y1, x1) in zip(batch["image"].astype(np.float32) / 255.0, batch["bbox"]):
    h, w = image.shape[:2]
    x = _pil(image, helpers.IMAGE_SIZE, Image.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h))
    low = helpers.DEGRADE_PARAMS["lowres"]["low"]
    xs.append(x)
    zs.append(_pil(_pil(x, low, Image.BICUBIC), helpers.IMAGE_SIZE, Image.BICUBIC))
  return np.stack(xs), np.stack(zs)


def _conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """SAME 3x3 correlation of NHWC `x` with an HWIO kernel, as nine shifted products."""
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3))


def _small_cnn(variables: dict, x: np.ndarray, train_mode: bool) -> np.ndarray:
  """small_cnn's logits, written from its definition (models/small_cnn.py) in float64."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  stats = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
  x = (x - MEAN) / STD
  for i in range(len(helpers.WIDTHS)):
    if i > 0:  # 2x2 max pooling, stride 2
      n, h, w, c = x.shape
      x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = _conv3x3(x, params[f"conv{i + 1}"]["kernel"])
    bn = params[f"bn{i + 1}"]
    mean, var = (x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))) if train_mode else (
        stats[f"bn{i + 1}"]["mean"], stats[f"bn{i + 1}"]["var"])
    x = np.maximum((x - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"], 0.0)
  return x.mean(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _perturbed(variables: dict, seed: int) -> dict:
  """Variables with non-trivial BatchNorm scales, biases and running statistics."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
  for path, leaf in flat.items():
    if path[-1] in ("scale", "var"):
      flat[path] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    elif path[-1] == "mean" or (path[-1] == "bias" and path[-2].startswith("bn")):
      flat[path] = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def reference():
  batch = helpers.tiny_batch(BATCH, seed=1)
  model = helpers.tiny_model()
  student = _perturbed(helpers.init_variables(model, seed=0), seed=1)
  teacher = _perturbed(helpers.init_variables(model, seed=100), seed=2)
  x, z = _pil_views(batch)
  return dict(batch=batch, model=model, student=student, teacher=teacher, x=x, z=z)


@pytest.mark.parametrize("name", ["train_a", "train_b", "cqd"])
def test_first_step_loss_is_the_formula_on_numpy_and_pil(reference, name):
  method, distill = methods.get_method(name), helpers.kd_config()
  model, labels = reference["model"], reference["batch"]["label"]
  step = helpers.tiny_step(method, train.data_mesh(), model=model, kd=distill, flip=False)
  tx, _ = train.make_optimizer(helpers.optimizer_config(), 10)
  state = train.create_train_state(model, jax.random.key(0), helpers.IMAGE_SIZE, tx, reference["student"])
  _, metrics = step(state, {n: reference["teacher"] for n in method.frozen},
                    train.shard_batch(reference["batch"], train.data_mesh()))

  student_in = reference["x"] if method.stream(method.student).view == "a" else reference["z"]
  logits = _small_cnn(reference["student"], student_in, train_mode=True)
  ce = -_log_softmax(logits)[np.arange(BATCH), labels].mean()
  expected = ce
  if method.frozen:
    t = distill.temperature
    teacher_logits = _small_cnn(reference["teacher"], reference["x"], train_mode=False)
    targets = np.exp(_log_softmax(teacher_logits / t))
    soft_ce = -(targets * _log_softmax(logits / t)).sum(-1).mean()
    np.testing.assert_allclose(float(metrics["distill"]), soft_ce, rtol=1e-4)
    expected = ce + distill.weight * soft_ce
  np.testing.assert_allclose(float(metrics["ce"]), ce, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)


def test_optimizer_is_sgd_with_momentum_and_decoupled_weight_decay_on_kernels():
  lr, momentum, weight_decay = 0.1, 0.9, 0.1
  tx, _ = train.make_optimizer(helpers.optimizer_config(schedule="constant", lr=lr, momentum=momentum,
                                                        weight_decay=weight_decay), num_steps=10)
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))}, "bn": {"scale": rng.normal(size=(4,))},
            "head": {"kernel": rng.normal(size=(4, 5)), "bias": rng.normal(size=(5,))}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  expected = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  velocity = jax.tree.map(np.zeros_like, expected)
  opt_state = tx.init(params)
  for _ in range(3):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape), expected)
    updates, opt_state = tx.update(jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads), opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    # v <- momentum * v + g + weight_decay * p (kernels only: ndim > 1); p <- p - lr * v
    decayed = jax.tree.map(lambda g, p: g + (weight_decay * p if p.ndim > 1 else 0.0), grads, expected)
    velocity = jax.tree.map(lambda v, d: momentum * v + d, velocity, decayed)
    expected = jax.tree.map(lambda p, v: p - lr * v, expected, velocity)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6), params, expected)
