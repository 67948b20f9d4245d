"""Times depthwise convolutions on EfficientNet-Lite0-like layer shapes: XLA's grouped conv vs the "shift" impl.

    python -m benchmarks.depthwise [--batch=32] [--repeats=5] [--forward]

For each shape, jitted forward+backward (the output and its gradients w.r.t. input and kernel for a random
output gradient g, as in a training step) of
  lax             lax.conv_general_dilated(feature_group_count=C) (what flax nn.Conv does)
  shift           cqd_jax.models.depthwise "shift": shifted multiply-adds with the hand-written backward
  shift_autodiff  the same forward with plain JAX autodiff as backward (the first probe's version)
are timed interleaved (one call of each in turn per repeat, after a warm-up call each), and the median is
printed as ms and images/s, with lax/shift (the speed-up of shift). `--forward` also times forward only.
Timings depend on the machine and its load; run it on an otherwise idle machine.
"""

import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cqd_jax.models import depthwise
from cqd_jax.models import windows

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation and shape (median reported).")
_FORWARD = flags.DEFINE_boolean("forward", False, "Also time the forward pass alone.")

# (input size, channels, kernel, stride): six of the 16 depthwise layers of EfficientNet-Lite0 at 224 px input.
SHAPES = ((112, 96, 3, 2), (56, 144, 3, 1), (28, 240, 5, 1), (14, 480, 3, 1), (14, 672, 5, 2), (7, 1152, 5, 1))


def _shift_autodiff(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  pads = windows.window_pads(x.shape[1:3], kernel.shape[:2], strides, "SAME")
  return depthwise._shift_forward(x, kernel, strides, pads)  # pylint: disable=protected-access


IMPLS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "lax": lambda x, k, s: depthwise.depthwise_conv(x, k, s, "SAME", "lax"),
    "shift": lambda x, k, s: depthwise.depthwise_conv(x, k, s, "SAME", "shift"),
    "shift_autodiff": _shift_autodiff,
}


def _forward_backward(f: Callable, x: jax.Array, kernel: jax.Array, g: jax.Array, strides: int):
  """The output and its vector-Jacobian product with g (gradients w.r.t. x and kernel), as in a training step.

  The output is returned, not reduced to a loss: with `jnp.vdot(out, g)` as the only consumer, XLA:CPU fuses the
  shifted sum into that reduction and materialises every tap (3x slower); in a network the output feeds the next
  layer (BatchNorm), where it is materialised once.
  """
  out, vjp = jax.vjp(lambda x, k: f(x, k, strides), x, kernel)
  return out, vjp(g)


def _time(fns: dict[str, Callable], args: tuple, repeats: int) -> dict[str, float]:
  """Median seconds per call of each fn, calls interleaved; the first (compiling) call is not timed."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str]) -> None:
  del argv
  n, repeats = _BATCH.value, _REPEATS.value
  print(f"backend {jax.default_backend()}, jax {jax.__version__}, batch {n}, float32, median of {repeats}; "
        "ms per call (images/s)")
  modes = ("fwd+bwd", "fwd") if _FORWARD.value else ("fwd+bwd",)
  header = f"{'layer (H W C k s)':<22} {'mode':<8}" + "".join(f"{name:>22}" for name in IMPLS) + f"{'lax/shift':>11}"
  print(header)
  rng = np.random.default_rng(0)
  for size, c, k, s in SHAPES:
    x = jnp.asarray(rng.standard_normal((n, size, size, c)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, c)) / k, jnp.float32)
    out_size = -(-size // s)
    g = jnp.asarray(rng.standard_normal((n, out_size, out_size, c)), jnp.float32)
    for mode in modes:
      if mode == "fwd":
        fns = {name: jax.jit(lambda x, k, g, f=f, s=s: f(x, k, s)) for name, f in IMPLS.items()}
      else:
        fns = {name: jax.jit(lambda x, k, g, f=f, s=s: _forward_backward(f, x, k, g, s)) for name, f in IMPLS.items()}
      secs = _time(fns, (x, kernel, g), repeats)
      cells = "".join(f"{1e3 * t:>11.1f} ({n / t:>6.0f}/s)" for t in secs.values())
      print(f"{size}x{size}x{c} k{k} s{s}".ljust(22) + f" {mode:<8}{cells}{secs['lax'] / secs['shift']:>10.1f}x",
            flush=True)


if __name__ == "__main__":
  app.run(main)
