"""Depthwise 2-D convolution that is fast on XLA:CPU, with flax `nn.Conv`-compatible parameters.

XLA:CPU hands a grouped convolution (`lax.conv_general_dilated(..., feature_group_count=C)`, what nn.Conv does) to
its generic runtime convolution, which is slow with one channel per group: it made the depthwise layers of mobile
networks ~10x slower than in PyTorch. Written as k*k shifted multiply-adds ("shift"), the forward pass is one
fused elementwise loop (after one padding copy); its backward pass is hand-written (`jax.custom_vjp`) because
plain autodiff of the shifts is slow on CPU: the input gradient is the same kind of shifted sum of the output
gradient (split into stride**2 phases, so strided layers need no zero-interleaving), and the kernel gradient (k*k
sums over batch and space) is taken one cache-sized batch chunk at a time. On GPU/TPU grouped convolutions go to
native kernels (cuDNN on GPU), so `impl="auto"` keeps XLA's convolution there (not measured in this project).

Layout is NHWC; the kernel is HWIO with I = 1, shape (kh, kw, 1, C): exactly the `kernel` of
`nn.Conv(features=C, kernel_size=(kh, kw), feature_group_count=C)`, so weights are interchangeable (a PyTorch
depthwise weight (C, 1, kh, kw) transposes (2, 3, 1, 0) to it).
"""

import functools
import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cqd_jax.models.common import Dtype
from cqd_jax.models.windows import Padding, resolve_impl, window_pads, window_taps

# Batch-chunk size (bytes of input per chunk) for the kernel gradient: the fastest of 256 KiB / 1 MiB / 4 MiB
# in a probe on a 2-core x86 CPU (EfficientNet-Lite0 layer shapes, batch 32).
_DW_CHUNK_BYTES = 1 << 20


def _acc_dtype(dtype: Dtype) -> Dtype:
  """Accumulate low-precision inputs in float32 (as convolutions do), float32/64 in their own type."""
  return jnp.promote_types(dtype, jnp.float32)


def _shift_forward(x: jax.Array, kernel: jax.Array, strides: int, pads) -> jax.Array:
  kh, kw = kernel.shape[:2]
  acc = _acc_dtype(x.dtype)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))).astype(acc)
  ho = (xp.shape[1] - kh) // strides + 1
  wo = (xp.shape[2] - kw) // strides + 1
  w = kernel.astype(acc)
  out = None
  for i, j, tap in window_taps(xp, kh, kw, strides, (ho, wo)):
    term = tap * w[i, j, 0]
    out = term if out is None else out + term
  return out.astype(x.dtype)


def _shift_grad_input(g: jax.Array, kernel: jax.Array, strides: int, pads,
                      x_shape: tuple[int, ...]) -> jax.Array:
  """d out / d x contracted with g: for padded-input rows r = s*q + a (phase a), sum over taps i = a (mod s) of
  g[q - i // s] * w[i], i.e. a stride-1 shifted sum per phase; the s*s phases are then interleaved."""
  kh, kw = kernel.shape[:2]
  n, h, w_, c = x_shape
  s = strides
  _, ho, wo, _ = g.shape
  acc = _acc_dtype(g.dtype)
  mh, mw = (kh - 1) // s, (kw - 1) // s
  hq, wq = ho + mh, wo + mw
  gp = jnp.pad(g.astype(acc), ((0, 0), (mh, mh), (mw, mw), (0, 0)))
  w = kernel.astype(acc)
  rows = []
  for a in range(s):
    cols = []
    for b in range(s):
      phase = jnp.zeros((n, hq, wq, c), acc)  # stays zero only if the kernel is smaller than the stride
      for t, (i, j) in enumerate((i, j) for i in range(a, kh, s) for j in range(b, kw, s)):
        tap = lax.slice(gp, (0, mh - i // s, mw - j // s, 0), (n, mh - i // s + hq, mw - j // s + wq, c))
        phase = tap * w[i, j, 0] if t == 0 else phase + tap * w[i, j, 0]
      cols.append(phase)
    rows.append(cols[0] if s == 1 else jnp.stack(cols, axis=3))  # [n, hq, wq, s(b), c]
  dxp = rows[0] if s == 1 else jnp.stack(rows, axis=2).reshape(n, hq * s, wq * s, c)  # [n, hq, s(a), wq, s(b), c]
  (lo_h, _), (lo_w, _) = pads
  # Padded positions past the last window get no gradient; make sure the crop below is in range.
  extra_h, extra_w = max(0, lo_h + h - dxp.shape[1]), max(0, lo_w + w_ - dxp.shape[2])
  if extra_h or extra_w:
    dxp = jnp.pad(dxp, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
  return dxp[:, lo_h:lo_h + h, lo_w:lo_w + w_, :].astype(g.dtype)


def _shift_grad_kernel(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], strides: int,
                       pads) -> jax.Array:
  """d out / d kernel contracted with g: per tap, sum over batch and space of tap(x) * g, taken one batch chunk
  (about _DW_CHUNK_BYTES of input) at a time so that the k*k passes over it hit the cache."""
  kh, kw = kernel_shape[:2]
  n, _, _, c = x.shape
  _, ho, wo, _ = g.shape
  acc = _acc_dtype(x.dtype)
  chunk = max(1, min(n, _DW_CHUNK_BYTES // max(1, math.prod(x.shape[1:]) * x.dtype.itemsize)))
  while n % chunk:
    chunk -= 1

  def chunk_grad(xg: tuple[jax.Array, jax.Array]) -> jax.Array:
    xc, gc = xg
    xp = jnp.pad(xc, ((0, 0), pads[0], pads[1], (0, 0))).astype(acc)
    gc = gc.astype(acc)
    return jnp.stack([jnp.sum(tap * gc, axis=(0, 1, 2)) for _, _, tap in window_taps(xp, kh, kw, strides, (ho, wo))])

  xs = x.reshape(n // chunk, chunk, *x.shape[1:])
  gs = g.reshape(n // chunk, chunk, *g.shape[1:])
  dw = jnp.sum(lax.map(chunk_grad, (xs, gs)), axis=0)
  return dw.reshape(kh, kw, 1, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(x: jax.Array, kernel: jax.Array, strides: int, pads) -> jax.Array:
  return _shift_forward(x, kernel, strides, pads)


def _shift_conv_fwd(x, kernel, strides, pads):
  return _shift_forward(x, kernel, strides, pads), (x, kernel)


def _shift_conv_bwd(strides, pads, res, g):
  x, kernel = res
  dx = _shift_grad_input(g, kernel, strides, pads, x.shape)
  dw = _shift_grad_kernel(x, g, kernel.shape, strides, pads).astype(kernel.dtype)
  return dx.astype(x.dtype), dw


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)
# Compiled as one program even when called eagerly (e.g. by `model.init`): op-by-op dispatch of the k*k taps
# and their gradients took ~30 s for an EfficientNet-Lite0 forward pass; inside an outer jit it is inlined.
_shift_conv_jit = jax.jit(_shift_conv, static_argnums=(2, 3))


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: Padding = "SAME",
                   impl: str = "auto") -> jax.Array:
  """Depthwise convolution of NHWC `x` with `kernel` [kh, kw, 1, C]: out[..., c] = conv(x[..., c], kernel[..., 0, c]).

  `padding` is "SAME" (TF semantics, as lax/flax: output ceil(H / strides), any odd extra row/column at the
  bottom/right), "VALID", or explicit ((top, bottom), (left, right)). `impl`: "lax" (XLA grouped convolution),
  "shift" (k*k shifted multiply-adds, custom backward; fast on CPU) or "auto" (see `resolve_impl`). Both
  compute the same sums, in a different order (results agree to float rounding). Low-precision inputs are
  accumulated in float32 by "shift"; the output has x's dtype.
  """
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]:
    raise ValueError(f"Expected x [N, H, W, C] and kernel [kh, kw, 1, C], got {x.shape} and {kernel.shape}.")
  if not isinstance(strides, numbers.Integral) or strides < 1:
    raise ValueError(f"strides must be a positive int, got {strides!r}.")
  strides = int(strides)
  pads = window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  if resolve_impl(impl) == "lax":
    return lax.conv_general_dilated(x, kernel, (strides, strides), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[3])
  return _shift_conv_jit(x, kernel, strides, pads)


class DepthwiseConv(nn.Module):
  """Depthwise conv layer (one kernel_size x kernel_size filter per channel), parameter-compatible with
  `nn.Conv(C, (k, k), strides, padding, feature_group_count=C, use_bias=...)`: params `kernel` [k, k, 1, C]
  and, with `use_bias`, `bias` [C]. `impl` picks the algorithm (`depthwise_conv`); "auto" is fast on CPU.
  """

  kernel_size: int
  strides: int = 1
  padding: Padding = "SAME"
  use_bias: bool = False
  dtype: Dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = depthwise_conv(x, kernel, self.strides, self.padding, self.impl)
    return y if bias is None else y + bias
