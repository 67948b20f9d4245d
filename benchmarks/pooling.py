"""Times the fused CQD step with XLA's max pooling against cqd_jax.models.pooling's "shift" max pooling.

    python -m benchmarks.pooling [--models=small_cnn,resnet18,vgg_m] [--sizes=112] [--batch=32] [--repeats=5]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep built twice from the same weights
and batch: once compiled with every max-pooling layer on `impl="lax"` (lax.reduce_window, whose gradient XLA:CPU
expands into a scatter), once with "shift" (what `impl="auto"` picks on CPU). Both are called once untimed, then
timed interleaved; the median images/s of each, the speed-up and the first-step losses' relative difference are
printed (float rounding at most: both pick the same maximum and send its gradient to the same input).
"""

from unittest import mock

from absl import app
from absl import flags

from benchmarks import step as bench_step
from cqd_jax.models import pooling

flags.FLAGS.set_default("models", ["small_cnn", "resnet18", "vgg_m"])
flags.FLAGS.set_default("sizes", ["112"])
flags.FLAGS.set_default("repeats", 5)


def build(name: str, size: int, batch, impl: str) -> bench_step.JaxStep:
  """The step compiled (in JaxStep's constructor) with every max-pooling layer on `impl`."""
  with mock.patch.object(pooling, "resolve_impl", lambda _: impl):
    return bench_step.JaxStep(name, size, batch, bench_step._CLASSES.value)  # pylint: disable=protected-access


def main(argv: list[str]) -> None:
  del argv
  bench_step.variant_table(
      lambda name, size, batch: {impl: build(name, size, batch, impl) for impl in ("lax", "shift")},
      ["lax pooling", "shift pooling"])


if __name__ == "__main__":
  app.run(main)
