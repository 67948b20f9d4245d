"""torchvision-layout VGG (Simonyan & Zisserman, 2015), so ImageNet weights load unchanged.

VGG-16 is the paper's "VGG-VD" (its deep teacher in the model-compression experiment). The layer order,
padding, 7x7 adaptive average pooling and channel-major flattening before fc6 follow torchvision exactly,
so converted weights give torchvision's logits. Parameter names mirror torchvision's state_dict keys:

  torchvision                 Flax (params path)
  features.{i}.{weight,bias}  features_{i}/{kernel,bias}   (i = index of the conv in `features`)
  classifier.0.*              classifier_0/*               (fc6: 512*7*7 -> 4096)
  classifier.3.*              classifier_3/*               (fc7: 4096 -> 4096)
  classifier.6.*              head/*                       (fc8: 4096 -> classes)

Dropout (torchvision: 0.5 after fc6 and fc7) is `dropout_rate`, 0.0 by default like `vgg_m`; `fc_width`
(4096) exists for small test models.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cqd_jax.models.common import Dtype, normalize_images, sow_feature
from cqd_jax.models.pooling import max_pool

# Output channels of each 3x3 conv; "M" is a 2x2/s2 max-pool (torchvision's configuration "D").
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_POOLED = 7  # torchvision's AdaptiveAvgPool2d((7, 7)).


def _adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
  """[out, size] averaging weights of torch's adaptive average pooling along one axis."""
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start, stop = (i * size) // out, -(-((i + 1) * size) // out)
    weights[i, start:stop] = 1.0 / (stop - start)
  return weights


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d((out, out)) for NHWC `x` of any spatial size."""
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out), x.dtype)
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out), x.dtype)
  return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x)


class VGG(nn.Module):
  """VGG: 3x3 conv+ReLU stacks with max-pools, 7x7 adaptive average pooling, fc6/fc7 (+dropout), head."""

  num_classes: int
  layers: Sequence[int | str]
  fc_width: int = 4096
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = normalize_images(x, self.dtype)
    index = 0  # Position in torchvision's `features` Sequential: each conv is followed by a ReLU.
    stage = 0  # Convolutions between two max-pools.
    for layer in self.layers:
      if layer == "M":
        stage += 1
        sow_feature(self, f"stage{stage}", x)
        x = max_pool(x, 2, 2)
        index += 1
      else:
        x = nn.Conv(layer, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"features_{index}")(x)
        x = nn.relu(x)
        index += 2
    x = adaptive_avg_pool(x, _POOLED)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch flattens NCHW.
    for name in ("classifier_0", "classifier_3"):
      x = nn.relu(nn.Dense(self.fc_width, dtype=self.dtype, name=name)(x))
      if name == "classifier_3":
        sow_feature(self, "pre_logits", x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


VGG16 = functools.partial(VGG, layers=VGG16_LAYERS)
