"""The results table: like the paper's Table 1, methods (and test domain) as rows, degradations as columns."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

from cqd_jax.methods import TEACHER_METHOD

Row = dict[str, Any]


def table_rows(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str]) -> list[list[str]]:
  """[method, test domain, accuracy (%) per degradation]; train_a appears tested on A and on B."""
  by_key = {(r["degradation"], r["method"]): r for r in rows}
  lines = []
  for method in methods:
    tests = ("a", "b") if method == TEACHER_METHOD else ("b",)
    for test in tests:
      cells = []
      for deg in degradations:
        r = by_key.get((deg, method))
        cells.append(f"{100 * r[f'accuracy_{test}']:.1f}" if r else "-")
      lines.append([method, test.upper(), *cells])
  return lines


def markdown(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str]) -> str:
  """The table as GitHub Markdown (top-1 accuracy in % on the test split)."""
  header = ["method", "test", *degradations]
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(line) + " |" for line in table_rows(rows, degradations, methods)]
  return "\n".join(out) + "\n"


def write_tables(rows: Sequence[Row], degradations: Sequence[str], methods: Sequence[str], workdir: str) -> str:
  """Writes results.csv (one row per degradation and method) and results.md; returns the Markdown."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["degradation", "method", "stage", "accuracy_a", "accuracy_b"])
  writer.writeheader()
  writer.writerows(rows)
  md = markdown(rows, degradations, methods)
  for name, text in (("results.csv", buf.getvalue()), ("results.md", md)):
    tmp = os.path.join(workdir, f".{name}.tmp")
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, os.path.join(workdir, name))
  return md
