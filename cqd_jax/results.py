"""The results table: like the paper's Table 1, methods (and test domain) as rows, degradations as columns."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Collection, Sequence

from cqd_jax import fileio

Row = dict[str, Any]


def table_rows(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str],
               tested_on_a: Collection[str] = ("train_a",)) -> list[list[str]]:
  """[method, test domain, accuracy (%) per degradation]; the methods `tested_on_a` (trained on A: the
  teacher) appear tested on A and on B, the others on B."""
  by_key = {(r["degradation"], r["method"]): r for r in rows}
  lines = []
  for method in methods:
    tests = ("a", "b") if method in tested_on_a else ("b",)
    for test in tests:
      cells = []
      for deg in degradations:
        r = by_key.get((deg, method))
        cells.append(f"{100 * r[f'accuracy_{test}']:.1f}" if r else "-")
      lines.append([method, test.upper(), *cells])
  return lines


def markdown(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str],
             tested_on_a: Collection[str] = ("train_a",)) -> str:
  """The table as GitHub Markdown (top-1 accuracy in % on the test split)."""
  header = ["method", "test", *degradations]
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(line) + " |" for line in table_rows(rows, degradations, methods, tested_on_a)]
  return "\n".join(out) + "\n"


def _si(x: float) -> str:
  """3 significant digits with an SI prefix: 3.37 G, 215 k."""
  for factor, prefix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
    if abs(x) >= factor:
      return f"{x / factor:.3g}{prefix}"
  return f"{x:.3g}"


def models_markdown(rows: Sequence[Row]) -> str:
  """One line per trained model (stage): its parameters and the FLOPs of one image's forward pass."""
  out = ["| stage | method | parameters | FLOPs / image |", "|---|---|---|---|"]
  seen = set()
  for r in rows:
    if r["stage"] in seen or r.get("params") is None:
      continue
    seen.add(r["stage"])
    out.append(f"| {r['stage']} | {r['method']} | {_si(r['params'])} | {_si(r['flops_per_image'])} |")
  return "\n".join(out) + "\n"


def plot(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str], path: str,
         tested_on_a: Collection[str] = ("train_a",)) -> None:
  """Grouped bar chart of accuracy on B per degradation (plus train_a on A, the upper bound), as a PNG."""
  import matplotlib  # Imported here: only needed when a run finishes.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  lines = table_rows(rows, degradations, methods, tested_on_a)
  fig, ax = plt.subplots(figsize=(3.0 + 2.0 * len(degradations), 3.4))
  width = 0.8 / len(lines)
  for i, (method, test, *cells) in enumerate(lines):
    values = [float(c) if c != "-" else 0.0 for c in cells]
    xs = [d + (i - (len(lines) - 1) / 2) * width for d in range(len(degradations))]
    ax.bar(xs, values, width, label=f"{method} on {test}")
  ax.set_xticks(range(len(degradations)), degradations)
  ax.set_xlabel("degradation")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title("Test accuracy by method (legend: method on test view)", fontsize=9)
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, bbox_inches="tight")  # the legend sits outside the axes
  plt.close(fig)


def write_tables(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str], workdir: str,
                 tested_on_a: Collection[str] = ("train_a",), curves: dict[str, Sequence[Row]] | None = None) -> str:
  """Writes results.csv (one row per degradation and method), results.md and results.png, and with `curves`
  (the validation accuracies of the teachers, by stage) their training lengths and validation.png; returns
  the Markdown."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["degradation", "method", "stage", "accuracy_a", "accuracy_b",
                                               "steps_trained", "max_steps", "best_step", "best_val_accuracy",
                                               "skipped_updates", "params", "flops_per_image", "model", "input_px"])
  writer.writeheader()
  writer.writerows(rows)
  md = (markdown(rows, degradations, methods, tested_on_a) + "\nModels (FLOPs: XLA's count for one image):\n\n"
        + models_markdown(rows))
  if curves:
    md += ("\nThe networks later stages read, each trained to its best validation accuracy within a cap "
           "(validation.png):\n\n" + lengths_markdown(rows, curves))
    best = {r["stage"]: r.get("best_step") for r in rows}
    plot_validation(curves, os.path.join(workdir, "validation.png"), best)
  for name, text in (("results.csv", buf.getvalue()), ("results.md", md)):
    fileio.write_text(os.path.join(workdir, name), text)
  plot(rows, degradations, methods, os.path.join(workdir, "results.png"), tested_on_a)
  return md


def lengths_markdown(rows: Sequence[Row], curves: dict[str, Sequence[Row]]) -> str:
  """One line per stage of `curves` (the teachers): steps trained of its cap, the best validation step and
  accuracy, and the number of validation evaluations."""
  out = ["| stage | steps trained | cap | best step | best validation top-1 (%) | evaluations |",
         "|---|---|---|---|---|---|"]
  by_stage = {r["stage"]: r for r in rows}
  for stage, curve in curves.items():
    r = by_stage.get(stage, {})
    best = r.get("best_val_accuracy")
    out.append(f"| {stage} | {r.get('steps_trained', '-')} | {r.get('max_steps', '-')} | {r.get('best_step', '-')} | "
               f"{'-' if best is None else f'{100 * best:.1f}'} | {len(curve)} |")
  return "\n".join(out) + "\n"


def plot_validation(curves: dict[str, Sequence[Row]], path: str, best: dict[str, int | None]) -> None:
  """Validation accuracy against step for each stage of `curves` ([{step, accuracy}]), the step of the model
  used (`best`, by stage: its best-validation checkpoint) marked."""
  import matplotlib  # Imported here: only needed when a run finishes.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  for stage, curve in curves.items():
    steps, acc = [h["step"] for h in curve], [100 * h["accuracy"] for h in curve]
    line, = ax.plot(steps, acc, marker=".", label=stage)
    if best.get(stage) in steps:
      i = steps.index(best[stage])
      ax.plot([steps[i]], [acc[i]], "o", mfc="none", ms=10, color=line.get_color())
  ax.set_title("Validation accuracy while training (circle: the model used)")
  ax.set_xlabel("step")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)


def write_timing(timing: Sequence[Row], workdir: str) -> None:
  """Writes timing.csv: each evaluation's images (both views) and images/s. Apart from results.csv, which is
  a function of the config and seed alone; these depend on the machine and its load."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["stage", "split", "view_b", "images", "seconds", "images_per_s"])
  writer.writeheader()
  writer.writerows(timing)
  fileio.write_text(os.path.join(workdir, "timing.csv"), buf.getvalue())


COMPARISON_FIELDS = ["degradation", "method", "model", "input_px", "test", "accuracy", "params", "flops_per_image",
                     "flops_vs_teacher", "images_per_s"]


def comparison_rows(rows: Sequence[Row], methods: Sequence[str], speeds: dict[str, float],
                    teacher: str = "train_a") -> list[Row]:
  """Per degradation, one line per method (the teacher's on A and on B, first) with what its deployed model
  costs: input size, parameters, FLOPs per image (also as a fraction of the teacher's) and the measured
  inference images/s (`speeds`, by stage)."""
  out = []
  for deg in dict.fromkeys(r["degradation"] for r in rows):
    by_method = {r["method"]: r for r in rows if r["degradation"] == deg}
    base = by_method.get(teacher, {}).get("flops_per_image")
    for method in dict.fromkeys([teacher, *methods]):
      r = by_method.get(method)
      if r is None:
        continue
      for test in ("a", "b") if method == teacher else ("b",):
        out.append({"degradation": deg, "method": method, "model": r.get("model"), "input_px": r.get("input_px"),
                    "test": test.upper(), "accuracy": round(100 * r[f"accuracy_{test}"], 1),
                    "params": r["params"], "flops_per_image": r["flops_per_image"],
                    "flops_vs_teacher": round(r["flops_per_image"] / base, 4) if base else None,
                    "images_per_s": speeds.get(r["stage"])})
  return out


def comparison_markdown(lines: Sequence[Row]) -> str:
  """comparison_rows as GitHub Markdown."""
  out = ["| degradation | method | model | input px | test | top-1 (%) | parameters | FLOPs / image | x teacher | "
         "images/s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in lines:
    ratio = "-" if r["flops_vs_teacher"] is None else f"{r['flops_vs_teacher']:.3g}"
    speed = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
    out.append(f"| {r['degradation']} | {r['method']} | {r['model']} | {r['input_px']} | {r['test']} | "
               f"{r['accuracy']:.1f} | {_si(r['params'])} | {_si(r['flops_per_image'])} | {ratio} | {speed} |")
  return "\n".join(out) + "\n"


def write_comparison(rows: Sequence[Row], methods: Sequence[str], speeds: dict[str, float], workdir: str,
                     machine: str) -> str:
  """Writes comparison.csv and comparison.md (config.compare); returns the Markdown. Images/s depend on
  `machine` and its load; the models were timed one after another in the same process."""
  lines = comparison_rows(rows, methods, speeds)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=COMPARISON_FIELDS)
  writer.writeheader()
  writer.writerows(lines)
  md = (f"Accuracy on the test split and the cost of each deployed model (images/s: evaluation-mode forward "
        f"passes on {machine}, timed one after another in one run).\n\n" + comparison_markdown(lines))
  fileio.write_text(os.path.join(workdir, "comparison.csv"), buf.getvalue())
  fileio.write_text(os.path.join(workdir, "comparison.md"), md)
  return md


# The paper's Table 2 (model compression with CQD): f -> g, then the methods of its columns A -> A, B -> B and
# CQD -> B (None: no such cell).
COMPRESSION_ROWS = ((("small", "small"), ("train_a_small", "train_b_small", "cqd_small")),
                    (("deep", "small"), (None, None, "cqd_to_small")),
                    (("deep", "deep"), ("train_a", "train_b", "cqd")))


def compression_markdown(rows: Sequence[Row], names: dict[str, str], paper: dict[str, float] | None = None) -> str:
  """The paper's Table 2 per degradation: top-1 (%) on the test split of train on A tested on A, train on B
  and CQD tested on B, for each teacher -> student pair (`names`: the deep and small models' names); the
  paper's number in brackets where `paper` ("<degradation>/<method>/<test>" -> %) has it."""
  out = []
  for deg in dict.fromkeys(r["degradation"] for r in rows):
    by_method = {r["method"]: r for r in rows if r["degradation"] == deg}
    out += [f"{deg}:\n", "| f -> g | A -> A | B -> B | CQD -> B |", "|---|---|---|---|"]
    for (f, g), cells in COMPRESSION_ROWS:
      shown = []
      for method, test in zip(cells, "abb"):
        r = by_method.get(method)
        cell = "-" if r is None else f"{100 * r[f'accuracy_{test}']:.1f}"
        ref = (paper or {}).get(f"{deg}/{method}/{test}")
        shown.append(cell + ("" if ref is None else f" ({ref:.1f})"))
      out.append(f"| {names[f]} -> {names[g]} | " + " | ".join(shown) + " |")
    out.append("")
  return "\n".join(out)


def write_compression(rows: Sequence[Row], names: dict[str, str], workdir: str, paper: dict[str, float] | None = None
                      ) -> str:
  """Writes compression.md (compression_markdown); returns it."""
  md = ("Model compression with CQD (the paper's Table 2): top-1 (%) on the test split"
        + (", the paper's in brackets" if paper else "") + ".\n\n" + compression_markdown(rows, names, paper))
  fileio.write_text(os.path.join(workdir, "compression.md"), md)
  return md
