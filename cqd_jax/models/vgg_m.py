"""VGG-M (Chatfield et al., "Return of the Devil in the Details", 2014), the network used by Su & Maji.

Differences from the original, so that it trains from scratch and accepts any input size >= 32 px:
  * BatchNorm after every conv (conv layers then have no bias) instead of LRN after conv1/conv2;
  * "SAME" padding for all convs and 3x3/s2 max-pools (224 px input gives a 7x7x512 conv5 map);
  * fc6 and fc7 are Dense layers applied after global average pooling of conv5 (fc6 therefore has
    512x4096 weights rather than 6x6x512x4096), each followed by ReLU and dropout (`dropout_rate`,
    0.5 in the original, 0.0 here by default so training needs no dropout rng).
Parameter names: `conv1`..`conv5`, `bn1`..`bn5`, `fc6`, `fc7`, `head` (the original fc8).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cqd_jax.models.common import Dtype, batch_norm, normalize_images, sow_feature
from cqd_jax.models.pooling import max_pool

# (features, kernel size, stride, max-pool after) for conv1..conv5.
_CONVS = ((96, 7, 2, True), (256, 5, 2, True), (512, 3, 1, False), (512, 3, 1, False),
          (512, 3, 1, True))


class VGGM(nn.Module):
  """VGG-M with BatchNorm instead of LRN and fc6/fc7 as Dense layers after global average pooling."""

  num_classes: int
  fc_width: int = 4096
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype)
    x = normalize_images(x, self.dtype)
    for i, (features, kernel, stride, pool) in enumerate(_CONVS, start=1):
      x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                  use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.relu(norm(name=f"bn{i}")(x))
      sow_feature(self, f"stage{i}", x)
      if pool:
        x = max_pool(x, 3, 2, "SAME")
    x = jnp.mean(x, axis=(1, 2))
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.fc_width, dtype=self.dtype, name=name)(x))
      if name == "fc7":
        sow_feature(self, "pre_logits", x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
