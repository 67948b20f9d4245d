"""Times the fused CQD step compiled with different XLA:CPU YNNPACK fusion kinds (config.xla_cpu_ynn_fusions).

    python -m benchmarks.cpu_fusions [--models=...] [--sizes=112,224] [--fusion=] [--fusion=dot,reduce]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep is built once per --fusion
value ("" = XLA's default fusions) from the same weights and batch; each is called once untimed (compile),
then all are timed interleaved in one process, and the median images/s of each, its speed-up over the first
value, and the relative difference of its first-step loss from the first value's are printed. Timings depend
on the machine and its load.
"""

import copy
import statistics

from absl import app
from absl import flags

from benchmarks import step as bench_step

_FUSIONS = flags.DEFINE_multi_string("fusion", ["", "dot,reduce"], "xla_cpu_ynn_fusions values to compare.")
_MODELS, _SIZES, _BATCH, _REPEATS, _CLASSES = (bench_step._MODELS, bench_step._SIZES, bench_step._BATCH,  # pylint: disable=protected-access
                                               bench_step._REPEATS, bench_step._CLASSES)  # pylint: disable=protected-access


def main(argv: list[str]) -> None:
  del argv
  names = [f or "(XLA default)" for f in _FUSIONS.value]
  print(f"batch {_BATCH.value}, {_CLASSES.value} classes, median of {_REPEATS.value} interleaved steps; "
        f"speed-up and first-loss difference against {names[0]}")
  print(f"{'model':<20}{'size':>5}  " + "".join(f"{n[:18]:>20}" for n in names))
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      batch = bench_step.make_batch(size, _BATCH.value, _CLASSES.value)
      steps = {}
      for fusion in _FUSIONS.value:
        config = copy.deepcopy(bench_step.base_config())
        config.degrade_params.lowres.low = bench_step.paper_low(size)
        config.xla_cpu_ynn_fusions = fusion
        steps[fusion] = bench_step.JaxStep(name, size, batch, _CLASSES.value, config)
      first = {k: fn() for k, fn in steps.items()}  # same weights and batch: the losses should agree
      times = bench_step.time_interleaved(steps, _REPEATS.value)
      rates = {k: _BATCH.value / statistics.median(t) for k, t in times.items()}
      base = _FUSIONS.value[0]
      cells = [f"{rates[k]:.1f} ({rates[k] / rates[base]:.2f}x, {abs(first[k] - first[base]) / abs(first[base]):.0e})"
               for k in _FUSIONS.value]
      print(f"{name:<20}{size:>5}  " + "".join(f"{c:>20}" for c in cells), flush=True)
      del steps


if __name__ == "__main__":
  app.run(main)
