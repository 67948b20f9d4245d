"""Trains the SRCNN behind the `lowres_sr` view, per data set: the CQD paper's appendix A (Table 4).

The authors used Dong et al.'s pretrained ImageNet x4 model, which cannot be downloaded here, so we fit our own
on the training split's high-quality views. The network learns the correction to exactly the image that
`degrade.lowres` produces (bicubic down to `low` px, bicubic back up to `size`), so `lowres_sr` = that
image plus the learnt correction. Independent of the experiment runner: `train` returns plain variables.
"""

from collections.abc import Iterable, Iterator, Mapping
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from cqd_jax import degrade
from cqd_jax.models import srcnn

Variables = Mapping[str, Any]


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of two arrays in [0, 1], from their mean squared error over all elements."""
  mse = jnp.mean((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2)
  return -10.0 * jnp.log10(mse)


def _pairs(images: jax.Array, *, low: int, size: int) -> tuple[jax.Array, jax.Array]:
  """(`lowres` view, high-quality target) at size x size; images of another size are resized like `identity`."""
  boxes = jnp.zeros((images.shape[0], 4), jnp.float32)  # Unread: lowres and identity keep the whole image.
  key = jax.random.key(0)  # Unread: both ops are deterministic.
  return (degrade.lowres(images, boxes, key, size=size, low=low)[0],
          degrade.identity(images, boxes, key, size=size)[0])


def upsample(variables: Variables, images: jax.Array, *, low: int, size: int) -> jax.Array:
  """Downsamples [N, H, W, 3] images in [0, 1] to low x low and super-resolves them to size x size."""
  return srcnn.enhance(variables, _pairs(images, low=low, size=size)[0])


def _train_step(params: Any, opt_state: optax.OptState, images: jax.Array, *, model: srcnn.SRCNN,
                tx: optax.GradientTransformation, low: int, size: int) -> tuple[Any, optax.OptState, jax.Array]:
  """One Adam step on the L2 loss between the SR output and the original, for a batch of originals."""
  inputs, targets = _pairs(images, low=low, size=size)

  def loss_fn(p):
    return jnp.mean((model.apply({"params": p}, inputs) - targets) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _batches(images: np.ndarray | jax.Array | Iterable[Any], batch_size: int,
             rng: np.random.Generator) -> Iterator[Any]:
  """Endless batches: random draws (without replacement within a batch) from an array, else cycles an iterable."""
  if isinstance(images, (np.ndarray, jax.Array)):
    while True:
      yield images[np.sort(rng.choice(len(images), min(batch_size, len(images)), replace=False))]
  for epoch in itertools.count():
    empty = True
    for batch in images:
      empty = False
      yield batch
    if empty:
      raise ValueError(f"SR training images ran out after {epoch} pass(es) with no batch; pass an array, a "
                       "re-iterable (a list, a data set) or an endless iterator")


def train(images_hr: np.ndarray | jax.Array | Iterable[Any], *, low: int, size: int, num_steps: int,
          batch_size: int = 64, lr: float = 1e-3, seed: int = 0, widths: tuple[int, int] = (64, 32),
          progress: bool = True) -> Variables:
  """Fits an SRCNN for `num_steps` Adam steps to undo `degrade.lowres(low=low, size=size)`; returns its variables.

  `images_hr`: high-quality views, float [N, H, W, 3] in [0, 1], normally the crops at size x size. An array is
  sampled `batch_size` images per step; an iterable of such arrays is used batch by batch (`batch_size`
  unread) and iterated again when it runs out (each new batch shape compiles the step once more).
  """
  model = srcnn.SRCNN(widths=widths)
  params = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3), jnp.float32))["params"]
  tx = optax.adam(lr)
  opt_state = tx.init(params)
  step = jax.jit(functools.partial(_train_step, model=model, tx=tx, low=low, size=size))
  batches = _batches(images_hr, batch_size, np.random.default_rng(seed))
  with tqdm.tqdm(total=num_steps, desc="sr", disable=not progress) as bar:
    for batch in itertools.islice(batches, num_steps):
      params, opt_state, loss = step(params, opt_state, jnp.asarray(batch, jnp.float32))
      bar.update()
      if bar.n % 50 == 0 or bar.n == num_steps:
        bar.set_postfix(loss=f"{float(loss):.5f}")
  return {"params": params}
