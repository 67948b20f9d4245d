"""Times the fused CQD step with XLA's max pooling against cqd_jax.models.pooling's "shift" max pooling.

    python -m benchmarks.pooling [--models=small_cnn,resnet18,vgg_m] [--sizes=112] [--batch=32] [--repeats=5]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep built twice from the same weights
and batch: once compiled with every max-pooling layer on `impl="lax"` (lax.reduce_window, whose gradient XLA:CPU
expands into a scatter), once with "shift" (what `impl="auto"` picks on CPU). Both are called once untimed, then
timed interleaved; the median images/s of each, the speed-up and both first-step losses are printed (equal up
to float rounding: both pick the same maximum and send its gradient to the same input).
"""

from unittest import mock

from absl import app
from absl import flags

from benchmarks import step as bench_step
from cqd_jax.models import pooling

flags.FLAGS.set_default("models", ["small_cnn", "resnet18", "vgg_m"])
flags.FLAGS.set_default("sizes", ["112"])
flags.FLAGS.set_default("repeats", 5)
_MODELS, _SIZES, _BATCH, _REPEATS, _CLASSES = (bench_step._MODELS, bench_step._SIZES, bench_step._BATCH,  # pylint: disable=protected-access
                                               bench_step._REPEATS, bench_step._CLASSES)  # pylint: disable=protected-access


def build(name: str, size: int, batch, impl: str) -> bench_step.JaxStep:
  """The step compiled (in JaxStep's constructor) with every max-pooling layer on `impl`."""
  with mock.patch.object(pooling, "resolve_impl", lambda _: impl):
    return bench_step.JaxStep(name, size, batch, _CLASSES.value)


def main(argv: list[str]) -> None:
  del argv
  print(f"batch {_BATCH.value}, {_CLASSES.value} classes, median of {_REPEATS.value} interleaved steps")
  print(f"{'model':<20}{'size':>5}{'lax img/s':>11}{'shift img/s':>13}{'speed-up':>10}  first losses (lax, shift)")
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      batch = bench_step.make_batch(size, _BATCH.value, _CLASSES.value)
      steps = {impl: build(name, size, batch, impl) for impl in ("lax", "shift")}
      losses = {impl: step() for impl, step in steps.items()}  # the first steps, also the warm-up calls
      rates = bench_step.compare_variants({impl: lambda s=s: s for impl, s in steps.items()}, _REPEATS.value,
                                          _BATCH.value)
      print(f"{name:<20}{size:>5}{rates['lax']:>11.1f}{rates['shift']:>13.1f}{rates['shift'] / rates['lax']:>9.2f}x"
            f"  {losses['lax']:.6f}, {losses['shift']:.6f}", flush=True)


if __name__ == "__main__":
  app.run(main)
