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
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)


def write_tables(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str], workdir: str,
                 tested_on_a: Collection[str] = ("train_a",)) -> str:
  """Writes results.csv (one row per degradation and method), results.md and results.png; returns the Markdown."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["degradation", "method", "stage", "accuracy_a", "accuracy_b",
                                               "best_step", "best_val_accuracy", "skipped_updates", "params",
                                               "flops_per_image"])
  writer.writeheader()
  writer.writerows(rows)
  md = (markdown(rows, degradations, methods, tested_on_a) + "\nModels (FLOPs: XLA's count for one image):\n\n"
        + models_markdown(rows))
  for name, text in (("results.csv", buf.getvalue()), ("results.md", md)):
    fileio.write_text(os.path.join(workdir, name), text)
  plot(rows, degradations, methods, os.path.join(workdir, "results.png"), tested_on_a)
  return md


def write_timing(timing: Sequence[Row], workdir: str) -> None:
  """Writes timing.csv: each evaluation's images (both views) and images/s. Apart from results.csv, which is
  a function of the config and seed alone; these depend on the machine and its load."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["stage", "split", "view_b", "images", "seconds", "images_per_s"])
  writer.writeheader()
  writer.writerows(timing)
  fileio.write_text(os.path.join(workdir, "timing.csv"), buf.getvalue())
