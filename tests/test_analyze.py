"""`python -m cqd_jax.analyze`: tau and the confusion pairs on small arrays, then the whole analysis of the tiny
finished run (conftest.tiny_run), whose lowres view B is the box's crop, so every tau there is 1."""

import csv
import re
import subprocess
import sys

import numpy as np
import pytest

import helpers
from cqd_jax import analyze


def test_tau_counts_pixel_centres_inside_the_box():
  box = np.array([[0.0, 0.0, 0.5, 0.5]])  # the top-left 2 x 2 pixels of a 4 x 4 map
  inside, outside, uniform = np.zeros((3, 4, 4))
  inside[1, 0], outside[2, 3], uniform[:] = 1.0, 5.0, 1.0
  np.testing.assert_allclose(analyze.tau(np.stack([inside, outside, uniform]), np.repeat(box, 3, 0)),
                             [1.0, 0.0, 0.25])
  small = np.array([[0.0, 0.0, 0.3, 0.3]])  # holds the centre (0.125, 0.125) of pixel (0, 0) only
  np.testing.assert_allclose(analyze.tau(uniform[None], small), [1 / 16])
  assert np.isnan(analyze.tau(np.zeros((1, 4, 4)), box)[0])


def test_top_confusions_rank_pairs_by_reduction():
  labels = np.array([0, 0, 1, 1, 2, 2])
  before = analyze.confusion_matrix(labels, np.array([1, 0, 0, 1, 1, 2]), 3)
  after = analyze.confusion_matrix(labels, np.array([0, 0, 1, 1, 1, 2]), 3)
  np.testing.assert_allclose(before[0], [0.5, 0.5, 0.0])
  pairs = analyze.top_confusions(before, after, k=2)
  assert pairs == [(0, 1, 1.0, 0.0), (0, 2, 0.0, 0.0)]  # (1, 2) is as confused after: 0.5 either way


def _check_axes(fig):
  for ax in fig.axes:
    assert ax.get_title(), fig
    assert not ax.axison or (ax.get_xlabel() and ax.get_ylabel()), ax.get_title()


def test_analysis_of_the_tiny_run(tiny_run, tmp_path):
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  figures = analyze.analyze(str(workdir), grid_images=2, num_images=20)
  out = workdir / "analysis"
  assert sorted(p.name for p in out.iterdir()) == ["lowres_confusions.png", "lowres_gradients.png", "lowres_tau.png",
                                                   "report.md", "tau.csv"]  # no temporary files left
  assert sorted(figures) == sorted(str(out / n) for n in ("lowres_confusions.png", "lowres_gradients.png",
                                                          "lowres_tau.png"))
  for fig in figures.values():
    _check_axes(fig)
  assert len(figures[str(out / "lowres_gradients.png")].axes) == 2 * 3
  with open(out / "tau.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["degradation", "method", "image_id", "tau"]
  assert len(rows) == 2 * 20  # 5 test images for each of 4 classes, for train_b and cqd
  assert {(r["degradation"], r["method"]) for r in rows} == {("lowres", "train_b"), ("lowres", "cqd")}
  assert sorted(int(r["image_id"]) for r in rows if r["method"] == "cqd") == list(range(20))
  assert all(float(r["tau"]) == pytest.approx(1.0) for r in rows)  # the crop's box is the whole image
  report = (out / "report.md").read_text()
  links = re.findall(r"\]\(([^)]+)\)", report)
  assert sorted(links) == sorted(p.rsplit("/", 1)[1] for p in figures)
  assert "drops most from train_b to cqd (the run has no a_cqd stage" in report
  assert "| train_b | 1.000 |" in report and "on 20 test images" in report
  assert "no a_then_b or mixture_ab row for lowres" in report


def test_unfinished_stage_and_unknown_degradation_are_named(tiny_run, tmp_path):
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  with pytest.raises(ValueError, match="--degradation localize: the run in .* has only lowres"):
    analyze.analyze(str(workdir), ["localize"])
  (workdir / "stages" / "lowres__cqd" / "result.json").unlink()
  with pytest.raises(ValueError, match=f"--workdir {workdir}: stage lowres/cqd is not finished"):
    analyze.analyze(str(workdir))


def test_command_line_error_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cqd_jax.analyze", f"--workdir={tmp_path}"], cwd=helpers.REPO,
                          env=helpers.subprocess_env(), capture_output=True, text=True, timeout=120)
  assert helpers.error_line(result) == f"error: --workdir {tmp_path} has no config.json: not the workdir of a " \
                                       "cqd_jax.main run"
