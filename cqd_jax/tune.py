r"""Tunes config keys (the paper's T and lambda) on the validation split, never looking at the test split.

  python -m cqd_jax.tune --config=configs/cub_subset.py:lowres --workdir=/tmp/tune_cub_lowres \
      --grid=kd.temperature=1,2,5,10 --grid=kd.weight=50,200 --methods=cqd

Each point of the grid (the product of the --grid lists) is an ordinary workdir under <workdir>/points/, run
by experiment.run with `eval_split` set to the config's `validation_split`, so every accuracy it reports is
on validation data. When only the options of loss terms vary (`kd.*`), the stages whose methods do not read
them (the teacher) are trained once in <workdir>/teacher and linked into each point. Finished points are
skipped on a re-run, so a grid can be extended later. The table (tune.md, tune.csv) has one row per point, the
best point per degradation and method is marked, and the flags that apply it to the real run are printed.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import math
import os
from typing import Any, Sequence

from absl import flags
import ml_collections

from cqd_jax import checkpoint
from cqd_jax import config_lib
from cqd_jax import fileio
from cqd_jax import main as cli
from cqd_jax import multihost
from cqd_jax import methods as methods_lib

_GRID = flags.DEFINE_multi_string("grid", [], "key=v1,v2,... : a config key and the values to try (repeatable; "
                                  "the grid is the product of all).")
_METHODS = flags.DEFINE_list("methods", None, "Methods to tune (default: the config's distilling methods).")

Grid = list[tuple[str, list[Any]]]


def parse_grid(specs: Sequence[str], config: ml_collections.ConfigDict) -> Grid:
  """[(key, values)] from `key=v1,v2` strings, each value converted to the type the config's key has."""
  if not specs:
    raise config_lib.ConfigError("--grid: give at least one key=v1,v2,... (e.g. kd.temperature=1,2,5,10)")
  grid = []
  for spec in specs:
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not values.strip():
      raise config_lib.ConfigError(f"--grid={spec!r}: expected key=v1,v2,...")
    try:
      current = config_lib.get(config, key)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"--grid={spec!r}: {e}") from None
    grid.append((key, [_convert(v.strip(), current, spec) for v in values.split(",")]))
  keys = [k for k, _ in grid]
  if len(set(keys)) != len(keys):
    raise config_lib.ConfigError(f"--grid: a key is given twice: {', '.join(keys)}")
  return grid


def _convert(text: str, current: Any, spec: str) -> Any:
  kind = type(current)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false"):
        raise ValueError(text)
      return text.lower() == "true"
    if kind in (int, float, str):
      return kind(text)
  except ValueError:
    raise config_lib.ConfigError(f"--grid={spec!r}: {text!r} is not a valid {kind.__name__}") from None
  raise config_lib.ConfigError(f"--grid={spec!r}: only number, string and bool keys can be tuned, not "
                               f"{kind.__name__}")


def point_name(assignment: Sequence[tuple[str, Any]]) -> str:
  """A point's directory name, e.g. `temperature=5,weight=200` (the last part of each key)."""
  return ",".join(f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float) else
                  f"{key.rsplit('.', 1)[-1]}={value}" for key, value in assignment)


def tuned_methods(config: ml_collections.ConfigDict, names: Sequence[str] | None) -> list[str]:
  """The methods to tune: `names`, or else those of config.methods that distil (their λ and T matter)."""
  known = methods_lib.all_methods(config)
  names = list(names) if names else [m for m in config.methods if known.get(m) and known[m].frozen]
  if not names:
    raise config_lib.ConfigError("--methods: none given and config key methods has no distilling method")
  for name in names:
    methods_lib.get_method(name, config)
  for name in names:
    for other in dict.fromkeys([*names, *(m for m in config.methods if m in known)]):
      if name in _sources(other, known):
        raise config_lib.ConfigError(f"--methods: {name} is the teacher of {other}; tune the methods it teaches")
  return names


def _sources(name: str, known: dict[str, methods_lib.Method]) -> set[str]:
  """The methods `name` takes weights from, directly or through others."""
  out = set()
  for source in known[name].sources:
    out |= {source} | _sources(source, known)
  return out


def shared_methods(config: ml_collections.ConfigDict, grid: Grid, methods: Sequence[str]) -> tuple[str, ...]:
  """The sources of the tuned `methods` that no grid key affects: with only term options (config sections
  a term reads, such as kd) in the grid, the methods whose terms read none of them (the teacher), else none."""
  known = methods_lib.all_methods(config)
  sections = {t.options for m in known.values() for t in m.terms if isinstance(t.options, str)}
  in_section = lambda key, section: key.startswith(f"{section}.")  # kd.weight in kd, pd.kd.weight in pd.kd
  if not all(any(in_section(key, s) for s in sections) for key, _ in grid):
    return ()
  reads = lambda m: any(isinstance(t.options, str) and any(in_section(key, t.options) for key, _ in grid)
                        for t in known[m].terms)
  shared = {s for m in methods for s in _sources(m, known) if not reads(s)}
  return tuple(s for s in known if s in shared)


def validation_config(config: ml_collections.ConfigDict, methods: Sequence[str]) -> ml_collections.ConfigDict:
  """`config` evaluating on its validation split (and not also choosing checkpoints by it), for `methods`,
  without the comparison table."""
  if not config.get("validation_split"):
    raise config_lib.ConfigError("config key validation_split is empty: tuning needs a validation split")
  out = copy.deepcopy(config)
  out.eval_split = config.validation_split
  out.validation_split = ""
  out.methods = tuple(methods)
  if out.get("compare"):  # each point's table is its validation accuracy; no models are timed
    out.compare = False
  return out


def run(config: ml_collections.ConfigDict, workdir: str, grid: Grid, methods: Sequence[str]) -> list[dict[str, Any]]:
  """Runs (or resumes) every point of `grid`; returns one row per point, degradation and tuned method."""
  from cqd_jax import experiment  # JAX and TFDS, only when running.

  base = validation_config(config, methods)
  if not base.dataset.data_dir:  # one data set for the teacher and all points
    base.dataset.data_dir = os.path.join(workdir, "data")
  shared = shared_methods(config, grid, methods)
  teacher_dir = os.path.join(workdir, "teacher")
  if shared:
    teacher_config = copy.deepcopy(base)
    teacher_config.methods = shared
    experiment.say(f"tune: {', '.join(shared)} (shared by every point: the grid does not change them)")
    _run_point(experiment, teacher_config, teacher_dir)
  points = list(itertools.product(*[[(key, v) for v in values] for key, values in grid]))
  rows = []
  for i, assignment in enumerate(points):
    name = point_name(assignment)
    point = copy.deepcopy(base)
    for key, value in assignment:
      config_lib.set_value(point, key, value)
    config_lib.validate(point)
    point_dir = os.path.join(workdir, "points", name)
    if shared:
      _link_teachers(experiment, point, shared, teacher_dir, point_dir)
    experiment.say(f"tune: point {i + 1}/{len(points)}: {name}")
    try:
      scores = {(r["degradation"], r["method"]): r["accuracy_b"] for r in _run_point(experiment, point, point_dir)}
    except checkpoint.NonFiniteError as e:  # a setting that diverges is a result of the search, not its end
      experiment.say(f"tune: point {name} diverged: {cli.one_line(e)}")
      scores = {}
    for deg in point.degradations:
      for method in methods:
        rows.append({"point": name, **dict(assignment), "degradation": deg, "method": method,
                     "val_accuracy": scores.get((deg, method), math.nan)})
  return rows


def _run_point(experiment, config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  os.makedirs(workdir, exist_ok=True)
  config_lib.save(config, workdir, write=multihost.is_primary())
  return experiment.run(config, workdir)


def _link_teachers(experiment, config: ml_collections.ConfigDict, shared: Sequence[str], teacher_dir: str,
                   point_dir: str) -> None:
  """Links the shared stages (of methods `shared`) into a point's workdir, where experiment.run skips them."""
  if not multihost.is_primary():
    return
  for stage in experiment.plan(config):
    if stage.method not in shared:
      continue
    link = experiment.stage_dir(point_dir, stage)
    if not os.path.lexists(link):
      os.makedirs(os.path.dirname(link), exist_ok=True)
      # Relative, so the whole tune workdir can be moved.
      os.symlink(os.path.relpath(experiment.stage_dir(teacher_dir, stage), os.path.dirname(link)), link)


def best(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
  """The row with the highest validation accuracy per (degradation, method); ties go to the earlier point and
  diverged points (NaN) never win."""
  out: dict[tuple[str, str], dict[str, Any]] = {}
  for row in rows:
    key = (row["degradation"], row["method"])
    if math.isnan(row["val_accuracy"]):
      continue
    if key not in out or row["val_accuracy"] > out[key]["val_accuracy"]:
      out[key] = row
  return out


def markdown(rows: Sequence[dict[str, Any]], grid: Grid) -> str:
  """Validation accuracy (%) per point (rows) and degradation/method (columns); the best of a column in bold,
  "diverged" where the loss or a gradient stopped being finite."""
  columns = list(dict.fromkeys((r["degradation"], r["method"]) for r in rows))
  winners = best(rows)
  keys = [k for k, _ in grid]
  header = [*keys, *(f"{d}/{m}" for d, m in columns)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name in dict.fromkeys(r["point"] for r in rows):
    cells = {(r["degradation"], r["method"]): r for r in rows if r["point"] == name}
    first = next(iter(cells.values()))
    out = [str(first[k]) for k in keys]
    for col in columns:
      r = cells.get(col)
      text = "-" if r is None else "diverged" if math.isnan(r["val_accuracy"]) else f"{100 * r['val_accuracy']:.1f}"
      out.append(f"**{text}**" if r is not None and winners.get(col) is r else text)
    lines.append("| " + " | ".join(out) + " |")
  return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], grid: Grid, workdir: str) -> str:
  """Writes tune.csv and tune.md; returns the Markdown."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["point", *(k for k, _ in grid), "degradation", "method", "val_accuracy"])
  writer.writeheader()
  writer.writerows(rows)
  md = markdown(rows, grid)
  fileio.write_text(os.path.join(workdir, "tune.csv"), buf.getvalue())
  fileio.write_text(os.path.join(workdir, "tune.md"), md)
  return md


def _grid_and_methods(config: ml_collections.ConfigDict) -> tuple[Grid, list[str]]:
  """The --grid and --methods flags, checked against `config` (ConfigError naming the flag or key)."""
  grid, methods = parse_grid(_GRID.value, config), tuned_methods(config, _METHODS.value)
  validation_config(config, methods)
  return grid, methods


def _tune_and_report(config: ml_collections.ConfigDict, workdir: str) -> None:
  grid, methods = _grid_and_methods(config)
  rows = run(config, workdir, grid, methods)
  if not multihost.is_primary():
    return
  md = write_tables(rows, grid, workdir)
  print(f"\nTop-1 accuracy (%) on the {config.validation_split} split:\n")
  print(md)
  for (deg, method), row in best(rows).items():
    flags_text = " ".join(f"--config.{k}={row[k]}" for k, _ in grid)
    print(f"best for {deg}/{method}: {flags_text}  ({100 * row['val_accuracy']:.1f}%)")
  print(f"Tables: {os.path.join(workdir, 'tune.md')} and tune.csv")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.run_command(_tune_and_report, check=_grid_and_methods)


if __name__ == "__main__":
  cli.run(main)
