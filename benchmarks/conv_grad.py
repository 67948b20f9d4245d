"""Times convolution kernel gradients on XLA:CPU: autodiff of lax.conv against matmul formulations (rejected).

    python -m benchmarks.conv_grad [--size=112] [--batch=32] [--repeats=7]

For ResNet-18's convolution shapes at `--size` px input, jitted with the YNNPACK fusions the configs use:
  fwd       the forward convolution
  dx        its input gradient (autodiff)
  dw        its kernel gradient (autodiff: what the train step runs)
  im2col    the kernel gradient as one matmul of the k*k concatenated strided slices ("patches") of the padded
            input with the output gradient
  taps      the same as k*k matmuls, one per tap, stacked
interleaved after a warm-up call each; median ms, and the largest difference of im2col and taps from dw
relative to dw's largest entry. Timings depend on the machine and its load.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from cqd_jax import train
from cqd_jax.models import windows

_SIZE = flags.DEFINE_integer("size", 112, "Input size (px) of the network whose layer shapes are timed.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per variant and shape (median reported).")

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, s, p):
  return lax.conv_general_dilated(x, w, (s, s), p, dimension_numbers=_DN)


def _patches(x, k, s, p, out_hw):
  xp = jnp.pad(x, ((0, 0), *p, (0, 0)))
  return [tap for _, _, tap in windows.window_taps(xp, k, k, s, out_hw)]


def _im2col(x, g, k, s, p):
  cols = jnp.concatenate(_patches(x, k, s, p, g.shape[1:3]), axis=-1)
  dw = lax.dot_general(cols.reshape(-1, cols.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
  return dw.reshape(k, k, x.shape[-1], g.shape[-1])


def _taps(x, g, k, s, p):
  g2 = g.reshape(-1, g.shape[-1])
  dws = [lax.dot_general(t.reshape(-1, t.shape[-1]), g2, (((0,), (0,)), ((), ())))
         for t in _patches(x, k, s, p, g.shape[1:3])]
  return jnp.stack(dws).reshape(k, k, x.shape[-1], g.shape[-1])


def main(argv: list[str]) -> None:
  del argv
  options = train.compiler_options("dot,reduce")
  q = _SIZE.value // 4  # after the stem and its pooling
  shapes = [(_SIZE.value, 3, 64, 7, 2), (q, 64, 64, 3, 1), (q, 64, 128, 3, 2), (q // 2, 128, 128, 3, 1),
            (q // 4, 256, 256, 3, 1), (q // 8, 512, 512, 3, 1), (q, 64, 128, 1, 2)]
  rng = np.random.default_rng(0)
  print(f"batch {_BATCH.value}, median ms of {_REPEATS.value} interleaved calls")
  header = "".join(f"{n:>9}" for n in ("fwd", "dx", "dw", "im2col", "taps"))
  print(f"{'input':>16} {'k/s':>5}{header}   rel. diff")
  for h, ci, co, k, s in shapes:
    p = ((k // 2, k // 2),) * 2
    x = jnp.asarray(rng.standard_normal((_BATCH.value, h, h, ci), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32) * 0.1)
    g = jnp.asarray(rng.standard_normal(_conv(x, w, s, p).shape, np.float32))
    fns = {
        "fwd": lambda x, w, g: _conv(x, w, s, p),
        "dx": lambda x, w, g: jax.vjp(lambda x: _conv(x, w, s, p), x)[1](g)[0],
        "dw": lambda x, w, g: jax.vjp(lambda w: _conv(x, w, s, p), w)[1](g)[0],
        "im2col": lambda x, w, g: _im2col(x, g, k, s, p),
        "taps": lambda x, w, g: _taps(x, g, k, s, p),
    }
    fns = {name: jax.jit(f, compiler_options=options) for name, f in fns.items()}
    outs = {name: jax.block_until_ready(f(x, w, g)) for name, f in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(_REPEATS.value):
      for name, f in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(f(x, w, g))
        times[name].append(time.perf_counter() - start)
    scale = float(jnp.max(jnp.abs(outs["dw"])))
    diffs = [float(jnp.max(jnp.abs(outs[n] - outs["dw"]))) / scale for n in ("im2col", "taps")]
    cells = "".join(f"{1e3 * np.median(times[n]):>9.1f}" for n in fns)
    print(f"{f'{h}x{h}x{ci}->{co}':>16} {f'{k}/{s}':>5}{cells}   {diffs[0]:.0e} {diffs[1]:.0e}", flush=True)


if __name__ == "__main__":
  app.run(main)
