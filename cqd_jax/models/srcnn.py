"""SRCNN (Dong et al., ECCV 2014), the 9-5-5 super-resolution network of the CQD paper's appendix A.

It refines an image that was already upsampled to the output size (by `degrade.lowres`'s bicubic resize) and
learns the residual, so an untrained network (last layer zero) returns its input unchanged.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_SIZES = (9, 5, 5)  # Dong et al.'s 9-5-5 model; the widths of the two hidden layers are module fields.


class SRCNN(nn.Module):
  """conv9x9 -> ReLU -> conv5x5 -> ReLU -> conv5x5 to a residual; out = clip(input + residual, 0, 1).

  Input and output are NHWC float32 images in [0, 1]; convolutions are named `conv1`..`conv3`.
  """

  widths: tuple[int, int] = (64, 32)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    y = x
    for i, (width, k) in enumerate(zip(self.widths, KERNEL_SIZES)):
      y = nn.relu(nn.Conv(width, (k, k), padding="SAME", name=f"conv{i + 1}")(y))
    k = KERNEL_SIZES[-1]
    residual = nn.Conv(x.shape[-1], (k, k), padding="SAME", kernel_init=nn.initializers.zeros,
                       name="conv3")(y)
    return jnp.clip(x + residual, 0.0, 1.0)


def from_variables(variables: Mapping[str, Any]) -> SRCNN:
  """The SRCNN whose parameters `variables` holds (widths read from the kernel shapes), to apply them."""
  params = variables["params"]
  return SRCNN(widths=tuple(int(params[f"conv{i}"]["kernel"].shape[-1]) for i in (1, 2)))


def enhance(variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """Applies the SRCNN in `variables` to upsampled images [N, H, W, C] in [0, 1]."""
  return from_variables(variables).apply(variables, images)
