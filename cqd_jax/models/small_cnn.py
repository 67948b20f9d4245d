"""Small VGG-style CNN, fast enough on a couple of CPU cores for the embedded demo."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cqd_jax.models.common import Dtype, batch_norm, normalize_images, sow_feature
from cqd_jax.models.pooling import max_pool


class SmallCNN(nn.Module):
  """Blocks of conv3x3-BN-ReLU (one per entry of `widths`) with 2x2 max-pooling between them, GAP, linear head.

  Parameters are named `conv{i}` / `bn{i}` (1-based) and `head`.
  """

  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 256)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype)
    x = normalize_images(x, self.dtype)
    for i, width in enumerate(self.widths):
      if i > 0:
        x = max_pool(x, 2, 2)
      x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
      sow_feature(self, f"stage{i + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    sow_feature(self, "pre_logits", x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
