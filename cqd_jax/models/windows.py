"""Sliding-window helpers shared by the shifted-slice ("shift") layers: depthwise convolution and max pooling.

XLA:CPU is slow at two windowed ops that mobile and classic convnets use: grouped convolutions with one channel
per group, and the gradient of max pooling (select-and-scatter, which XLA:CPU expands into a scatter over
explicit indices). Both are written here as k*k strided slices ("taps") combined elementwise, which XLA fuses
into plain loops. On GPU/TPU the native ops are fast, so `impl="auto"` keeps them there.
"""

from typing import Iterator, Sequence

import jax
from jax import lax

Padding = str | Sequence[tuple[int, int]]
IMPLS = ("auto", "lax", "shift")


def resolve_impl(impl: str) -> str:
  """"lax" or "shift" for `impl`; "auto" is "shift" on the CPU backend (slow native op there), else "lax"."""
  if impl not in IMPLS:
    raise ValueError(f"Unknown impl {impl!r}; expected one of {IMPLS}.")
  if impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "lax"
  return impl


def window_pads(spatial: Sequence[int], window: Sequence[int], strides: int,
                padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
  """(lo, hi) padding per spatial dim; "SAME"/"VALID" exactly as lax (TF "same": extra row/col at bottom/right)."""
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(spatial, window, (strides, strides), padding.upper())
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
    raise ValueError(f"Padding must be 'SAME', 'VALID' or two non-negative (lo, hi) pairs, got {padding!r}.")
  return pads  # type: ignore[return-value]


def window_taps(xp: jax.Array, kh: int, kw: int, strides: int,
                out_hw: tuple[int, int]) -> Iterator[tuple[int, int, jax.Array]]:
  """Yields (i, j, xp[:, i::s, j::s, :] cut to the output size) for every kernel tap, row-major."""
  n, _, _, c = xp.shape
  ho, wo = out_hw
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * strides + 1, j + (wo - 1) * strides + 1, c),
                            (1, strides, strides, 1))
