"""Plugin: registers the degradation op `posterize` (few grey levels per channel, like a cheap camera or GIF)."""

import jax
import jax.numpy as jnp

from cqd_jax import degrade


def posterize(images: jax.Array, boxes: jax.Array, key: jax.Array, *, size: int,
              levels: int = 4) -> tuple[jax.Array, jax.Array]:
  """Resizes to size x size, then rounds every channel to `levels` evenly spaced values in [0, 1]."""
  del key  # Deterministic: not in degrade.RANDOM_OPS.
  images = jax.image.resize(images.astype(jnp.float32), (images.shape[0], size, size, images.shape[-1]),
                            "linear", antialias=True)
  steps = levels - 1
  return jnp.round(jnp.clip(images, 0.0, 1.0) * steps) / steps, boxes


degrade.OPS["posterize"] = posterize
