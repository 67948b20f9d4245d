"""Times the fused CQD step with the live teacher against the step reading cached teacher logits.

    python -m benchmarks.teacher_cache [--models=small_cnn,resnet18] [--sizes=32,112] [--batch=32] [--repeats=3]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep built twice from the same weights and batch: the teacher run
in every step, and `cached_teacher=True` (config.distill.cache_teacher: the logits read from a table computed
once). Both are called once untimed (compile), then timed interleaved; the median images/s of each and
live/cached time (the speed-up) are printed. The one-off cost of the table (two teacher forward passes per
training image) is not in these numbers. Timings depend on the machine and its load.
"""

from absl import app
from absl import flags

from benchmarks import step as bench_step

# The flags are benchmarks.step's (--models, --sizes, --batch, --repeats, --classes), with these defaults.
flags.FLAGS.set_default("models", ["small_cnn", "resnet18"])
flags.FLAGS.set_default("sizes", ["32", "112"])
_MODELS, _SIZES, _BATCH, _REPEATS, _CLASSES = (bench_step._MODELS, bench_step._SIZES, bench_step._BATCH,  # pylint: disable=protected-access
                                               bench_step._REPEATS, bench_step._CLASSES)  # pylint: disable=protected-access

def main(argv: list[str]) -> None:
  del argv
  print(f"batch {_BATCH.value}, {_CLASSES.value} classes, median of {_REPEATS.value} interleaved steps")
  print(f"{'model':<20}{'size':>5}{'live img/s':>12}{'cached img/s':>14}{'speed-up':>10}")
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      batch = bench_step.make_batch(size, _BATCH.value, _CLASSES.value)
      rates = bench_step.compare_variants(
          {"live": lambda: bench_step.JaxStep(name, size, batch, _CLASSES.value),
           "cached": lambda: bench_step.JaxStep(name, size, batch, _CLASSES.value, cached_teacher=True)},
          _REPEATS.value, _BATCH.value)
      print(f"{name:<20}{size:>5}{rates['live']:>12.1f}{rates['cached']:>14.1f}{rates['cached'] / rates['live']:>9.2f}x",
            flush=True)


if __name__ == "__main__":
  app.run(main)
