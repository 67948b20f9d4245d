"""Where the time of one fused CQD step goes: jax.profiler on the JAX step, torch.profiler on its PyTorch twin.

    python -m benchmarks.profile [--models=resnet18] [--sizes=224] [--batch=32] [--steps=3] [--top=12]

The steps are benchmarks.step's (JaxStep, TorchStep: same weights, batch and computation). Each is warmed up
(JAX compiles), then `--steps` steps of each are traced, JAX's first. JAX: the events of XLA:CPU's worker
threads in the trace, one per executed HLO instruction (thunk), summed by instruction and by kind, the kind
read from the compiled HLO (a fusion counts as a convolution or a dot when its computation has one). torch:
the self CPU time of each aten op. Both are per step, in ms of thread time (XLA may run two thunks at once
on two threads, so its sum can exceed the step's wall time). The summary puts both frameworks' time into
the same few buckets: convolutions (forward and backward), matmuls, and everything else.
Timings depend on the machine and its load; run it on an otherwise idle machine.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

from absl import app
from absl import flags
import jax

from benchmarks import step as bench_step

# benchmarks.step's flags (--models, --sizes, --batch, --classes) with these defaults, and two of its own.
flags.FLAGS.set_default("models", ["resnet18"])
flags.FLAGS.set_default("sizes", ["224"])
_MODELS, _SIZES, _BATCH, _CLASSES = (bench_step._MODELS, bench_step._SIZES, bench_step._BATCH,  # pylint: disable=protected-access
                                     bench_step._CLASSES)  # pylint: disable=protected-access
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps per framework.")
_TOP = flags.DEFINE_integer("top", 12, "Rows of the per-op tables.")

# Trace events that are the executor's bookkeeping or waiting, not an HLO instruction's work.
_NOT_WORK = ("ThunkExecutor::", "ThreadpoolListener::", "SlinkyThreadPool::", "end: ")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][a-z\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_DIM_LABELS = re.compile(r"dim_labels=([\w>\-]+)")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def hlo_kinds(hlo_text: str) -> tuple[dict[str, str], dict[str, str]]:
  """Instruction name -> "convolution", "dot", or its opcode (a fusion's contents decide its kind), and
  instruction name -> its result type and, for a convolution, its dimension labels."""
  opcodes: dict[str, str] = {}
  details: dict[str, str] = {}
  calls: dict[str, str] = {}
  contents: dict[str, set[str]] = collections.defaultdict(set)
  computation = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and " = " not in line:
      computation = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    opcodes[name] = opcode
    result = line.split(" = ", 1)[1].split(" ", 1)[0].split("{")[0]
    labels = _DIM_LABELS.search(line)
    details[name] = result + (f" {labels.group(1)}" if labels else "")
    called = _CALLS.search(line)
    if called:
      calls[name] = called.group(1)
    if computation:
      contents[computation].add(opcode)

  def kind(name: str) -> str:
    opcode = opcodes[name]
    inner = contents.get(calls.get(name, ""), set())
    for wanted in ("convolution", "dot"):
      if opcode == wanted or wanted in inner:
        return wanted
    return opcode

  return {name: kind(name) for name in opcodes}, details


def jax_profile(jax_step: bench_step.JaxStep, steps: int) -> tuple[dict[str, float], float]:
  """Thread seconds per HLO instruction per step, and the wall seconds per step, from a jax.profiler trace."""
  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    with jax.profiler.trace(logdir):
      for _ in range(steps):
        jax_step()
    wall = (time.perf_counter() - start) / steps
    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    seconds: dict[str, float] = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if not line.name.startswith("tf_XLA"):
          continue
        for event in line.events:
          if not event.name.startswith(_NOT_WORK):
            seconds[event.name] += event.duration_ns / 1e9 / steps
  return dict(seconds), wall


def torch_profile(torch_step: bench_step.TorchStep, steps: int) -> tuple[dict[str, float], float]:
  """Self CPU seconds per aten op per step, and the wall seconds per step, from torch.profiler."""
  from torch import profiler  # pylint: disable=g-import-not-at-top (bench extra)
  start = time.perf_counter()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      torch_step()
  wall = (time.perf_counter() - start) / steps
  return {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}, wall


def jax_bucket(kind: str) -> str:
  return {"convolution": "convolution", "dot": "matmul"}.get(kind, "other")


def torch_bucket(op: str) -> str:
  if "conv" in op:
    return "convolution"
  if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
    return "matmul"
  return "other"


def _print_top(title: str, rows: list[tuple[str, str, float]], total: float, top: int,
               details: dict[str, str] | None = None) -> None:
  print(f"\n{title}")
  print(f"{'':<4}{'op':<40}{'kind':<13}{'ms/step':>9}{'share':>8}  {'result' if details else ''}")
  for i, (name, kind, s) in enumerate(sorted(rows, key=lambda r: -r[2])[:top]):
    print(f"{i + 1:<4}{name[:39]:<40}{kind[:12]:<13}{1e3 * s:>9.1f}{100 * s / total:>7.1f}%  "
          f"{(details or {}).get(name, '')}")


def main(argv: list[str]) -> None:
  del argv
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      profile(name, size, _BATCH.value)


def profile(name: str, size: int, batch_size: int) -> None:
  """Prints the per-op tables of both frameworks and the bucket summary for one model and size."""
  batch = bench_step.make_batch(size, batch_size, _CLASSES.value)
  jax_step = bench_step.JaxStep(name, size, batch, _CLASSES.value)
  kinds, details = hlo_kinds(jax_step.compiled.as_text())
  jax_step(), jax_step()
  per_op, jax_wall = jax_profile(jax_step, _STEPS.value)
  jax_rows = [(op, kinds.get(op, "?"), s) for op, s in per_op.items()]
  jax_details = {op: details.get(op, "") for op in per_op}
  jax_total = sum(s for *_, s in jax_rows)
  print(f"\n== {name}, {size} px, batch {batch_size}, {_STEPS.value} traced steps each")
  _print_top(f"JAX: {1e3 * jax_wall:.0f} ms/step wall, {1e3 * jax_total:.0f} ms/step of XLA thread time",
             jax_rows, jax_total, _TOP.value, jax_details)
  buckets = {"jax": collections.Counter(), "torch": collections.Counter()}
  for _, kind, s in jax_rows:
    buckets["jax"][jax_bucket(kind)] += s
  walls = {"jax": jax_wall}
  if bench_step.torch is not None:
    torch_step = bench_step.TorchStep(name, size, batch, _CLASSES.value, jax_step.student_variables,
                                      jax_step.teacher_variables)
    torch_step(), torch_step()
    per_op, walls["torch"] = torch_profile(torch_step, _STEPS.value)
    torch_rows = [(op, torch_bucket(op), s) for op, s in per_op.items()]
    torch_total = sum(s for *_, s in torch_rows)
    _print_top(f"torch: {1e3 * walls['torch']:.0f} ms/step wall, {1e3 * torch_total:.0f} ms/step of self CPU time",
               torch_rows, torch_total, _TOP.value)
    for _, bucket, s in torch_rows:
      buckets["torch"][bucket] += s
  print(f"\n{'ms/step':<14}" + "".join(f"{f:>10}" for f in buckets) + (f"{'jax/torch':>11}" if "torch" in walls else ""))
  for bucket in ("convolution", "matmul", "other"):
    cells = [buckets[f][bucket] for f in buckets]
    ratio = f"{cells[0] / cells[1]:>11.2f}" if len(cells) == 2 and cells[1] else ""
    print(f"{bucket:<14}" + "".join(f"{1e3 * c:>10.0f}" for c in cells) + ratio)
  cells = [walls[f] for f in buckets]
  print(f"{'step (wall)':<14}" + "".join(f"{1e3 * c:>10.0f}" for c in cells)
        + (f"{cells[0] / cells[1]:>11.2f}" if len(cells) == 2 else ""))


if __name__ == "__main__":
  app.run(main)
