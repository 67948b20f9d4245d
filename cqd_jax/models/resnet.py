"""torchvision-layout ResNets (He et al., 2016; v1.5: stride on the 3x3 conv of Bottleneck).

Padding is explicit (7x7: 3, 3x3: 1, 1x1: 0, max-pool: 1) so outputs match torchvision exactly given
converted weights. Parameter/stat names mirror torchvision's state_dict keys:

  torchvision                      Flax (params / batch_stats path)
  conv1.weight                     conv1/kernel
  bn1.{weight,bias}                bn1/{scale,bias}
  bn1.{running_mean,running_var}   bn1/{mean,var}                  (batch_stats)
  layer{s}.{b}.conv{k}.weight      layer{s}_{b}/conv{k}/kernel     (k = 1, 2; 3 for Bottleneck)
  layer{s}.{b}.bn{k}.*             layer{s}_{b}/bn{k}/*
  layer{s}.{b}.downsample.0.weight layer{s}_{b}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*      layer{s}_{b}/downsample_bn/*
  fc.{weight,bias}                 head/{kernel,bias}

Conv weights convert OIHW -> HWIO (transpose (2, 3, 1, 0)); fc.weight [out, in] -> head/kernel [in, out].
BatchNorm's num_batches_tracked has no counterpart.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cqd_jax.models.common import Dtype, ModuleDef, batch_norm, normalize_images, sow_feature
from cqd_jax.models.pooling import max_pool

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for convs.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers plus an identity or 1x1-conv-BN shortcut (ResNet-18/34)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(scale_init=last_scale, name="bn2")(y)
    return nn.relu(y + _shortcut(self, x, self.features))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand (x4) conv-BN layers plus shortcut (ResNet-50/101/152)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    out_features = self.features * self.expansion
    y = self.conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out_features, (1, 1), name="conv3")(y)
    y = self.norm(scale_init=last_scale, name="bn3")(y)
    return nn.relu(y + _shortcut(self, x, out_features))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, out_features: int) -> jax.Array:
  """Identity, or torchvision's `downsample` (strided 1x1 conv + BN) when the shape changes."""
  if block.strides == 1 and x.shape[-1] == out_features:
    return x
  x = block.conv(out_features, (1, 1), (block.strides,) * 2, name="downsample_conv")(x)
  return block.norm(name="downsample_bn")(x)


class ResNet(nn.Module):
  """ResNet with a 7x7/s2 stem and 3x3/s2 max-pool, four stages of 64/128/256/512-wide blocks, GAP, head.

  `zero_init_residual` zero-initialises the last BN scale of each block (torchvision's flag of that name).
  """

  num_classes: int
  stage_sizes: Sequence[int]
  block_cls: type[BasicBlock] | type[Bottleneck]
  zero_init_residual: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, padding="VALID", kernel_init=_conv_init,
                             dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    x = normalize_images(x, self.dtype)
    x = conv(64, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    sow_feature(self, "stem", x)
    x = max_pool(x, 3, 2, _pad(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(
            features=64 * 2**i, strides=2 if i > 0 and j == 0 else 1, conv=conv, norm=norm,
            zero_init_residual=self.zero_init_residual, name=f"layer{i + 1}_{j}")(x)
      sow_feature(self, f"stage{i + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    sow_feature(self, "pre_logits", x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
