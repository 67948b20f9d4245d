"""Times the fused CQD step compiled with different XLA:CPU YNNPACK fusion kinds (config.xla_cpu_ynn_fusions).

    python -m benchmarks.cpu_fusions [--models=...] [--sizes=112,224] [--fusion=] [--fusion=dot,reduce]

Takes benchmarks.step's flags. For each model and size, benchmarks.step.JaxStep is built once per --fusion
value ("" = XLA's default fusions) from the same weights and batch; each is called once untimed (compile),
then all are timed interleaved in one process, and the median images/s of each, its speed-up over the first
value, and the relative difference of its first-step loss from the first value's are printed. Timings depend
on the machine and its load.
"""

import copy

from absl import app
from absl import flags

from benchmarks import step as bench_step

_FUSIONS = flags.DEFINE_multi_string("fusion", ["", "dot,reduce"], "xla_cpu_ynn_fusions values to compare.")


def build(name: str, size: int, batch, fusion: str) -> bench_step.JaxStep:
  """The step compiled with `fusion` as config.xla_cpu_ynn_fusions."""
  config = copy.deepcopy(bench_step.base_config())
  config.degrade_params.lowres.low = bench_step.paper_low(size)
  config.xla_cpu_ynn_fusions = fusion
  return bench_step.JaxStep(name, size, batch, bench_step._CLASSES.value, config)  # pylint: disable=protected-access


def main(argv: list[str]) -> None:
  del argv
  bench_step.variant_table(lambda name, size, batch: {f: build(name, size, batch, f) for f in _FUSIONS.value},
                           [f or "(XLA default)" for f in _FUSIONS.value])


if __name__ == "__main__":
  app.run(main)
