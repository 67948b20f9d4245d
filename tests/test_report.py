"""cqd_jax.report on fake finished workdirs (config.json and results.csv only): grouping by seed, mean ± std,
the paper's numbers from config.paper, the gap closed and one-line errors."""

import csv
import importlib.util
import json
import os

from absl.testing import flagsaver
import pytest

from cqd_jax import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cub_lowres_config() -> dict:
  spec = importlib.util.spec_from_file_location("cub_lowres", os.path.join(REPO, "configs", "cub_lowres.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return json.loads(module.get_config().to_json_best_effort())


def _workdir(path, config: dict, accuracy: dict, **changes) -> str:
  """A finished run's workdir: config.json (`config` with `changes`) and results.csv (`accuracy`: fractions by
  (degradation, method))."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({**config, **changes}, f)
  with open(os.path.join(path, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["degradation", "method", "stage", "accuracy_a", "accuracy_b"])
    writer.writerows([deg, method, f"{deg}/{method}", a, b] for (deg, method), (a, b) in accuracy.items())
  return str(path)


def _run(workdirs, out):
  with flagsaver.flagsaver(workdirs=[str(w) for w in workdirs], report_dir=str(out)):
    report.main(["report"])


def test_gap_closed_on_a_hand_example():
  accuracy = {("lowres", "train_a", "a"): 70.0, ("lowres", "train_b", "b"): 60.0, ("lowres", "a_cqd", "b"): 65.0}
  assert report.gap_closed(accuracy, "lowres") == pytest.approx(50.0)
  assert report.gap_closed(accuracy, "edges") is None
  del accuracy[("lowres", "a_cqd", "b")]
  assert report.gap_closed(accuracy, "lowres") is None


def test_seeds_of_one_setting_give_mean_std_paper_and_gap(tmp_path):
  config = _cub_lowres_config()
  runs = [{("lowres", "train_a"): (0.70, 0.40), ("lowres", "train_b"): (0.30, 0.60), ("lowres", "a_cqd"): (0.5, 0.66)},
          {("lowres", "train_a"): (0.70, 0.42), ("lowres", "train_b"): (0.30, 0.64), ("lowres", "a_cqd"): (0.5, 0.66)}]
  workdirs = [_workdir(tmp_path / "s0", config, runs[0], seed=0),
              _workdir(tmp_path / "s1", config, runs[1], seed=1, progress_bar=False),  # cosmetic: same setting
              _workdir(tmp_path / "lr", config, runs[0], optimizer={**config["optimizer"], "lr": 0.1})]
  (first, other) = report.group(workdirs)
  assert (first.name, first.seeds, other.workdirs) == ("s0, s1 (cub_paired)", [0, 1], [workdirs[2]])
  by_key = {(r["quantity"], r["method"], r["test"]): r for r in report.rows(first)}
  train_b = by_key[("accuracy", "train_b", "B")]
  assert (train_b["ours"], train_b["ours_std"], train_b["n"]) == (pytest.approx(62.0), pytest.approx(8 ** 0.5), 2)
  assert (train_b["paper"], train_b["difference"]) == (60.7, pytest.approx(62.0 - 60.7))  # from config.paper
  assert by_key[("accuracy", "a_then_b", "B")]["n"] == 0  # the paper's, not run
  assert ("accuracy", "a_cqd", "A") not in by_key  # no number on A in the paper
  gap = by_key[("gap_closed", "a_cqd", "B")]
  assert gap["ours"] == pytest.approx(100 * (66 - 62) / (70 - 62))
  assert gap["paper"] == pytest.approx(100 * (64.3 - 60.7) / (67.3 - 60.7))

  _run(workdirs, tmp_path / "report")
  md = (tmp_path / "report" / "report.md").read_text()
  assert "| lowres | train_b | B | 62.0 ± 2.8 | 2 | 60.7 | +1.3 |" in md
  assert "| lowres | 50.0 | 54.5 | -4.5 |" in md and "## lr (cub_paired)" in md
  with open(tmp_path / "report" / "report.csv") as f:
    lines = list(csv.DictReader(f))
  assert len(lines) == 2 * 7 and lines[0]["setting"] == "s0, s1 (cub_paired)" and lines[0]["seeds"] == "0 1"


@pytest.mark.parametrize("missing", ["results.csv", "config.json"])
def test_unfinished_workdir_is_one_error_line_naming_it(tmp_path, capsys, missing):
  workdir = _workdir(tmp_path / "w", {"seed": 0, "dataset": {"name": "cub_paired"}}, {})
  os.remove(os.path.join(workdir, missing))
  with pytest.raises(SystemExit) as e:
    _run([workdir], tmp_path / "report")
  assert e.value.code == 1
  assert capsys.readouterr().err == f"error: workdir {workdir} has no {missing}: not a finished run of cqd_jax.main\n"
  assert not (tmp_path / "report").exists()


def test_same_seed_twice_and_bad_paper_keys_are_errors_naming_the_workdir(tmp_path):
  config = {"seed": 0, "dataset": {"name": "cub_paired"}}
  workdirs = [_workdir(tmp_path / name, config, {}) for name in ("a", "b")]
  with pytest.raises(ValueError, match=f"workdirs {workdirs[0]} and {workdirs[1]} are one setting with the same seed"):
    report.group(workdirs)
  bad = _workdir(tmp_path / "bad", config, {}, paper={"source": "x", "results": {"lowres/cqd": 60.0}})
  with pytest.raises(ValueError, match=f"{bad}/config.json: config key paper.results has 'lowres/cqd'"):
    report.rows(report.group([bad])[0])
