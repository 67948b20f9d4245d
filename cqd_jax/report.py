r"""Our numbers beside the paper's, from any finished runs, as one Markdown and one CSV table.

  python -m cqd_jax.report --workdirs=/runs/cub_lowres_s0,/runs/cub_lowres_s1,/runs/cars_edges --report_dir=/runs/report

Reads each workdir's config.json and results.csv (written by cqd_jax.main when a run ends). Workdirs whose
configs differ only in `seed` and cosmetic keys (config_lib.COSMETIC_KEYS) are one setting: each of its
(degradation, method, test view) rows shows our top-1 accuracy (%) as the mean over the seeds (± the sample
standard deviation from 2 seeds on, and n), the paper's number and the difference. Per degradation the gap
closed by A,CQD, (a_cqd on B - train_b on B) / (train_a on A - train_b on B), is given for our means and for
the paper's numbers. --report_dir (required, created if needed) gets report.md and report.csv, written atomically.

The paper's numbers come from the config's `paper` key (cosmetic: it never changes results):

  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"<degradation>/<method>/<test>": accuracy_percent, ...})

`source` says where the numbers are from; each key of `results` names a key of config.degradations, a method
the config trains (any name, e.g. train_a_shallow) and the view tested on, "a" or "b"; the value is top-1
accuracy in % (0-100). A run on B is reported on B; on A too for the models trained on A and wherever the
paper has a number on A. A config without `paper` (runs made before it existed) gets "-" for the paper's.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from cqd_jax import config_lib
from cqd_jax import fileio

# Checked in main(), not marked required: a required flag would fail every other command parsed in a process
# (a test process) that imported this module.
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Workdirs of finished runs (comma-separated; required).")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Directory to write report.md and report.csv to (required).")

# report.csv: quantity is "accuracy" or "gap_closed", all values in %; workdirs as --workdirs takes them.
FIELDS = ["setting", "dataset", "workdirs", "seeds", "quantity", "degradation", "method", "test", "ours", "ours_std",
          "n", "paper", "difference"]
# The gap closed: (GAP_METHOD on B - GAP_FLOOR on B) / (GAP_CEILING on A - GAP_FLOOR on B).
GAP_METHOD, GAP_FLOOR, GAP_CEILING = ("a_cqd", "b"), ("train_b", "b"), ("train_a", "a")

Key = tuple[str, str, str]  # (degradation, method, test view)
Row = dict[str, Any]


@dataclasses.dataclass
class Setting:
  """Runs of one config, one per seed: their workdirs, seeds and accuracies (%) by Key."""
  workdirs: list[str]
  config: dict[str, Any]
  seeds: list[Any]
  runs: list[dict[Key, float]]
  on_a: set[str] = dataclasses.field(default_factory=set)  # methods trained on A (a shared stage, "<method>@<A>")

  @property
  def name(self) -> str:
    """The workdirs' basenames and the data set, e.g. `cub_lowres_s0, cub_lowres_s1 (cub_paired)`."""
    return f"{', '.join(os.path.basename(w.rstrip(os.sep)) for w in self.workdirs)} ({self.config['dataset']['name']})"


def setting_key(config: dict[str, Any]) -> str:
  """What makes two runs' configs the same setting: the flat config without `seed` and cosmetic keys."""
  flat = config_lib._flatten(config)  # pylint: disable=protected-access (the same flattening as resume checks)
  return json.dumps({k: v for k, v in flat.items() if k != "seed" and not config_lib.is_cosmetic(k)},
                    sort_keys=True)


def load(workdir: str) -> tuple[dict[str, Any], dict[Key, float], set[str]]:
  """A workdir's config.json, its accuracies (%) from results.csv and the methods trained on A (their stage
  is shared by the degradations: "<method>@<view A>"); ValueError naming the missing file."""
  paths = {name: os.path.join(workdir, name) for name in ("config.json", "results.csv")}
  for name, path in paths.items():
    if not os.path.isfile(path):
      raise ValueError(f"workdir {workdir} has no {name}: not a finished run of cqd_jax.main")
  with open(paths["config.json"]) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{paths['config.json']} is not JSON: {e}") from None
  with open(paths["results.csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  accuracy, on_a = {}, {row["method"] for row in rows if "@" in row.get("stage", "")}
  for i, row in enumerate(rows):
    try:
      for test in ("a", "b"):
        accuracy[(row["degradation"], row["method"], test)] = 100 * float(row[f"accuracy_{test}"])
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"{paths['results.csv']} line {i + 2}: needs degradation, method, accuracy_a and "
                       "accuracy_b") from None
  return config, accuracy, on_a


def group(workdirs: Sequence[str]) -> list[Setting]:
  """The runs grouped by setting, in the order given; ValueError for a seed given twice in one setting."""
  if not workdirs:
    raise ValueError("--workdirs: give at least one workdir")
  settings: dict[str, Setting] = {}
  for workdir in workdirs:
    config, accuracy, on_a = load(workdir)
    s = settings.setdefault(setting_key(config), Setting([], config, [], []))
    if config.get("seed") in s.seeds:
      other = s.workdirs[s.seeds.index(config.get("seed"))]
      raise ValueError(f"workdirs {other} and {workdir} are one setting with the same seed {config.get('seed')}; "
                       "give each seed once")
    s.workdirs.append(workdir)
    s.seeds.append(config.get("seed"))
    s.runs.append(accuracy)
    s.on_a |= on_a
  return list(settings.values())


def paper_results(setting: Setting) -> dict[Key, float]:
  """config.paper.results by Key; ValueError naming the workdir for a key not of the schema."""
  out = {}
  for key, value in setting.config.get("paper", {}).get("results", {}).items():
    parts = tuple(key.split("/"))
    if len(parts) != 3 or parts[2] not in ("a", "b") or not isinstance(value, (int, float)):
      raise ValueError(f"{os.path.join(setting.workdirs[0], 'config.json')}: config key paper.results has "
                       f"{key!r}: {value!r}; expected '<degradation>/<method>/<a or b>': accuracy in %")
    out[parts] = float(value)
  return out


def gap_closed(accuracy: dict[Key, float], degradation: str) -> float | None:
  """The share (%) of the gap between train_b on B and train_a on A that a_cqd closes; None when unknown."""
  method, floor, ceiling = (accuracy.get((degradation, *k)) for k in (GAP_METHOD, GAP_FLOOR, GAP_CEILING))
  if None in (method, floor, ceiling) or ceiling == floor:
    return None
  return 100 * (method - floor) / (ceiling - floor)


def rows(setting: Setting) -> list[Row]:
  """One row per (degradation, method, test view) that we ran or the paper reports, then the gap closed per
  degradation; accuracies in %."""
  paper = paper_results(setting)
  ours = list(dict.fromkeys(k for run in setting.runs for k in run))
  keys = [k for k in ours if k[2] == "b" or k[1] in setting.on_a | {GAP_CEILING[0]} or k in paper]
  keys += [k for k in paper if k not in keys]
  base = {"setting": setting.name, "dataset": setting.config["dataset"]["name"], "workdirs": ",".join(setting.workdirs),
          "seeds": " ".join(map(str, setting.seeds))}
  out, means = [], {}
  for key in keys:
    values = [run[key] for run in setting.runs if key in run]
    mean = statistics.fmean(values) if values else None
    means[key] = mean
    out.append({**base, "quantity": "accuracy", "degradation": key[0], "method": key[1], "test": key[2].upper(),
                "ours": mean, "ours_std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values),
                "paper": paper.get(key), "difference": _difference(mean, paper.get(key))})
  means = {k: v for k, v in means.items() if v is not None}
  for degradation in dict.fromkeys(k[0] for k in keys):
    ours_gap, paper_gap = gap_closed(means, degradation), gap_closed(paper, degradation)
    if ours_gap is not None or paper_gap is not None:
      out.append({**base, "quantity": "gap_closed", "degradation": degradation, "method": GAP_METHOD[0],
                  "test": GAP_METHOD[1].upper(), "ours": ours_gap, "ours_std": None, "n": len(setting.runs),
                  "paper": paper_gap, "difference": _difference(ours_gap, paper_gap)})
  return out


def _difference(ours: float | None, paper: float | None) -> float | None:
  return None if ours is None or paper is None else ours - paper


def _cell(value: float | None, signed: bool = False) -> str:
  return "-" if value is None else f"{value:+.1f}" if signed else f"{value:.1f}"


def markdown(setting: Setting, lines: Sequence[Row]) -> str:
  """A setting's rows as GitHub Markdown: the accuracy table, then the gap closed per degradation."""
  paper = setting.config.get("paper", {}).get("source", "none in config.json")
  out = [f"## {setting.name}", "",
         f"Seeds: {', '.join(map(str, setting.seeds))}; top-1 accuracy (%) on the {setting.config.get('eval_split')} "
         f"split; paper: {paper}.", "",
         "| degradation | method | test | ours | n | paper | ours - paper |", "|---|---|---|---|---|---|---|"]
  for r in (r for r in lines if r["quantity"] == "accuracy"):
    ours = _cell(r["ours"]) + (f" ± {r['ours_std']:.1f}" if r["ours_std"] is not None else "")
    out.append(f"| {r['degradation']} | {r['method']} | {r['test']} | {ours} | {r['n']} | {_cell(r['paper'])} | "
               f"{_cell(r['difference'], signed=True)} |")
  gaps = [r for r in lines if r["quantity"] == "gap_closed"]
  if gaps:
    out += ["", "Gap closed (%) by a_cqd: (a_cqd on B - train_b on B) / (train_a on A - train_b on B), ours from "
            "the means.", "", "| degradation | ours | paper | ours - paper |", "|---|---|---|---|"]
    out += [f"| {r['degradation']} | {_cell(r['ours'])} | {_cell(r['paper'])} | {_cell(r['difference'], signed=True)} |"
            for r in gaps]
  return "\n".join(out) + "\n"


def write(settings: Sequence[Setting], out: str) -> str:
  """Writes <out>/report.md and <out>/report.csv (one row per setting and line of its tables); returns the
  Markdown."""
  all_rows, sections = [], []
  for setting in settings:
    lines = rows(setting)
    all_rows += lines
    sections.append(markdown(setting, lines))
  md = "# Our results beside the paper's\n\n" + "\n".join(sections)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=FIELDS)
  writer.writeheader()
  writer.writerows({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in all_rows)
  os.makedirs(out, exist_ok=True)
  fileio.write_text(os.path.join(out, "report.csv"), buf.getvalue())
  fileio.write_text(os.path.join(out, "report.md"), md)
  return md


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    for flag in (_WORKDIRS, _REPORT_DIR):
      if not flag.value:
        raise ValueError(f"flag --{flag.name} must have a value")
    md = write(group(_WORKDIRS.value), _REPORT_DIR.value)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    raise SystemExit(1) from None
  print(md)
  print(f"Tables: {os.path.join(_REPORT_DIR.value, 'report.md')} and report.csv")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with errors as one `error: ...` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
