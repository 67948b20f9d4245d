"""Times the fused CQD step with the live teacher against the step reading cached teacher logits.

    python -m benchmarks.teacher_cache [--models=small_cnn,resnet18] [--sizes=32,112] [--batch=32] [--repeats=3]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep built twice from the same weights
and batch: the teacher run in every step ("live"), and `cached_teacher=True` (config.cache_teacher: the
logits read from a table computed once). Both are called once untimed (compile), then timed interleaved; the
median images/s of each, cached/live (the speed-up) and the first-step losses' relative difference are printed.
The one-off cost of the table (two teacher forward passes per training image) is not in these numbers. Timings
depend on the machine and its load.
"""

from absl import app
from absl import flags

from benchmarks import step as bench_step

# The flags are benchmarks.step's (--models, --sizes, --batch, --repeats, --classes), with these defaults.
flags.FLAGS.set_default("models", ["small_cnn", "resnet18"])
flags.FLAGS.set_default("sizes", ["32", "112"])


def main(argv: list[str]) -> None:
  del argv
  classes = bench_step._CLASSES.value  # pylint: disable=protected-access
  bench_step.variant_table(
      lambda name, size, batch: {
          "live": bench_step.JaxStep(name, size, batch, classes),
          "cached": bench_step.JaxStep(name, size, batch, classes, cached_teacher=True)},
      ["live teacher", "cached teacher"])


if __name__ == "__main__":
  app.run(main)
