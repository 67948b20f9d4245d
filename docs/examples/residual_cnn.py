"""Plugin: registers the model `residual_cnn`, small_cnn's stages with a residual connection in each."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cqd_jax import models
from cqd_jax.models.common import Dtype, batch_norm, normalize_images, sow_feature


class ResidualCNN(nn.Module):
  """Per width: conv3x3 (stride 2 after the first stage)-BN-ReLU, conv3x3-BN, add, ReLU; then GAP and a head."""

  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype)
    x = normalize_images(x, self.dtype)  # RGB in [0, 1] in, ImageNet-standardised
    for i, width in enumerate(self.widths, 1):
      stride = 1 if i == 1 else 2
      x = nn.Conv(width, (3, 3), stride, use_bias=False, dtype=self.dtype, name=f"conv{i}a")(x)
      x = nn.relu(norm(name=f"bn{i}a")(x))
      y = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{i}b")(x)
      x = nn.relu(x + norm(name=f"bn{i}b")(y))
      sow_feature(self, f"stage{i}", x)  # named features, for terms that read "<stream>.features.stage{i}"
    x = jnp.mean(x, axis=(1, 2))
    sow_feature(self, "pre_logits", x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


models.MODELS["residual_cnn"] = ResidualCNN
