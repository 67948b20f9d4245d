"""Trainable adapters that map a student's feature to the shape of the feature it is compared with.

A feature-matching term between networks of different widths or input sizes (a 56 px student against a
224 px teacher has maps 4x smaller) compares `adapter(student feature)` with the target. Each adapter is a
linen Module built for one target shape (without the batch axis) and trained with the student; it is not
part of the exported model. Any pair of shapes works: maps are brought to the target's height and width,
vectors (pre_logits) only change width.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _fit(x: jax.Array, height: int, width: int) -> jax.Array:
  """Centre-crops a map [N, H, W, C] that is at least height x width, else resizes it bilinearly."""
  n, h, w, c = x.shape
  if h >= height and w >= width:
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, top:top + height, left:left + width]
  return jax.image.resize(x, (n, height, width, c), "linear")


class Conv1x1(nn.Module):
  """A 1x1 convolution to the target's channels (a linear map for vectors), then a bilinear resize of maps
  to the target's height and width (FitNets' regressor, with any spatial pair)."""

  target: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.target[-1], dtype=self.dtype, name="proj")(x).astype(jnp.float32)
    if x.ndim == 4 and x.shape[1:3] != tuple(self.target[:2]):
      x = jax.image.resize(x, (x.shape[0], *self.target), "linear")
    return x


class PixelShuffle(nn.Module):
  """Feature super-resolution: a 1x1 convolution to r*r times the target's channels, rearranged into an
  r times larger map (depth to space, r = the smallest integer factor reaching the target; the same map as a
  stride-r transposed convolution), then centre-cropped (or resized) to the target's height and width. Maps
  only. With `prelu` a PReLU follows (Pixel Distillation's image decoder: 3 target channels)."""

  target: tuple[int, ...]
  dtype: Any = jnp.float32
  prelu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or len(self.target) != 3:
      raise ValueError(f"the pixel_shuffle adapter maps feature maps; got {x.shape[1:]} -> {self.target}")
    height, width, channels = self.target
    r = max(1, math.ceil(height / x.shape[1]), math.ceil(width / x.shape[2]))
    y = nn.Conv(channels * r * r, (1, 1), dtype=self.dtype, name="conv")(x).astype(jnp.float32)
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, r, r, channels).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, channels)
    y = _fit(y, height, width)
    return nn.PReLU(name="prelu")(y) if self.prelu else y


ADAPTERS: dict[str, Callable[..., nn.Module]] = {
    "conv1x1": Conv1x1,
    "pixel_shuffle": PixelShuffle,
    "image_decoder": functools.partial(PixelShuffle, prelu=True),  # a feature map -> the normalised image
}
