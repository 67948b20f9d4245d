"""A data-set build killed midway (SIGKILL: no cleanup runs) never leaves a data set that reads as complete,
and building again gives, example by example, the data set an uninterrupted build gives.

cqd_synthetic is killed from outside, as a user or the OOM killer would, once TFDS has started writing a
data file into its `incomplete.*` directory; the test split is made five times larger than the train split,
so that the build is still running then. The fixture CUB builds in a fraction of a second, too fast to catch
from outside, so its build kills itself while reading an image of the test split.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cqd_jax import input_pipeline
from cqd_jax.data import registry
import fixtures_real as fx
import helpers

TIMEOUT = 120
# Train is written first (TFDS writes a split's file when the split is generated), then validation and test.
SYNTHETIC = dict(num_classes=20, image_size=32, train_per_class=20, validation_per_class=5)
TEST_PER_CLASS = (100, 400)  # The second only if the first build finished before it could be killed.


def _build_args(name: str, data_dir: pathlib.Path, **flags) -> list[str]:
  return ([f"--dataset={name}", f"--data_dir={data_dir}"] +
          [f"--{key}={value}" for key, value in flags.items()])


def _partial_files(data_dir: pathlib.Path) -> list[pathlib.Path]:
  """Non-empty files in TFDS's incomplete.* directories under `data_dir` (they may vanish while we look)."""
  found = []
  for path in data_dir.glob("**/incomplete.*/*"):
    try:
      if path.is_file() and path.stat().st_size > 0:
        found.append(path)
    except OSError:
      pass
  return found


def _kill_when_writing(args: list[str], data_dir: pathlib.Path) -> bool:
  """Runs `python -m data_prep.build args`; SIGKILLs it once it has data in an incomplete.* directory.

  Returns whether it was killed (False: it finished first, successfully).
  """
  proc = subprocess.Popen([sys.executable, "-m", "data_prep.build", *args], cwd=helpers.REPO,
                          env=helpers.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  try:
    while proc.poll() is None and not _partial_files(data_dir):
      time.sleep(0.005)
  finally:
    proc.kill()  # SIGKILL; nothing happens if it has already finished.
    stderr = proc.communicate(timeout=TIMEOUT)[1]
  assert proc.returncode in (0, -signal.SIGKILL), stderr[-4000:]
  return proc.returncode == -signal.SIGKILL


def _run_build(args: list[str], prefix: str = "") -> subprocess.CompletedProcess:
  """`python -m data_prep.build args`, after running `prefix` (code that patches the builder) if given."""
  command = ["-m", "data_prep.build"] if not prefix else [
      "-c", textwrap.dedent(prefix) + "\nfrom absl import app\nfrom data_prep import build\napp.run(build.main)\n"]
  return subprocess.run([sys.executable, *command, *args], cwd=helpers.REPO, env=helpers.subprocess_env(),
                        capture_output=True, text=True, timeout=TIMEOUT)


def _assert_reads_as_unbuilt(builder) -> pathlib.Path:
  """The killed build is not a data set (for TFDS and for our loaders); returns its leftover directory."""
  assert not builder.is_prepared() and not builder.data_path.exists()
  with pytest.raises(FileNotFoundError, match="is not built"):
    input_pipeline.num_examples(builder, "train")
  [leftover] = pathlib.Path(builder.data_path).parent.glob("incomplete.*")
  assert any(p.stat().st_size > 0 for p in leftover.iterdir()), "killed before it wrote anything"
  return leftover


def _assert_same_data_set(a, b) -> None:
  """Same splits, class names and examples, in the same order (decoded: the stored bytes are not canonical)."""
  assert set(a.info.splits) == set(b.info.splits) == set(registry.SPLITS[a.name])
  assert input_pipeline.class_names(a) == input_pipeline.class_names(b)
  for split in a.info.splits:
    xs, ys = a.as_data_source(split), b.as_data_source(split)
    assert len(xs) == len(ys) == a.info.splits[split].num_examples > 0
    for x, y in zip(xs, ys):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split}: {key}")


def _rebuild_and_compare(args: list[str], leftover: pathlib.Path, reference, **options) -> None:
  """Runs the build `args` again and compares the data set it makes with `reference` (same name and options)."""
  result = _run_build(args)
  assert result.returncode == 0, result.stderr[-4000:]
  assert f"{leftover}, left by an interrupted" in result.stderr  # Named in a warning, never read.
  data_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--data_dir="))
  rebuilt = registry.get_builder(reference.name, data_dir, **options)
  assert rebuilt.is_prepared()
  _assert_same_data_set(rebuilt, reference)


@pytest.mark.slow
def test_killed_synthetic_build_reads_as_unbuilt_and_rebuilds_identically(tmp_path):
  data_dir = tmp_path / "data"
  for test_per_class in TEST_PER_CLASS:
    options = dict(SYNTHETIC, test_per_class=test_per_class)
    args = _build_args("cqd_synthetic", data_dir, **options)
    if _kill_when_writing(args, data_dir):
      break
    shutil.rmtree(data_dir)
  else:
    pytest.fail(f"every build finished before it could be killed (test_per_class {TEST_PER_CLASS})")
  leftover = _assert_reads_as_unbuilt(registry.get_builder("cqd_synthetic", str(data_dir), **options))
  reference = registry.prepare("cqd_synthetic", str(tmp_path / "reference"), **options)
  _rebuild_and_compare(args, leftover, reference, **options)
  # A third run finds the data set complete: it builds nothing and warns about nothing.
  again = _run_build(args)
  assert again.returncode == 0 and "Generating" not in again.stderr and "interrupted" not in again.stderr


# Kills the build at its KILL_AT-th image: 11 train and 2 validation images come first (fx.EXPECTED_COUNTS).
_KILL_AT = 15
_SELF_KILL = f"""
    import os, signal
    from cqd_jax.data import paired
    rgb_jpeg, seen = paired.rgb_jpeg, []
    def rgb_jpeg_then_die(data, where):
      seen.append(where)
      if len(seen) == {_KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)
      return rgb_jpeg(data, where)
    paired.rgb_jpeg = rgb_jpeg_then_die
"""


@pytest.mark.slow
def test_killed_cub_build_reads_as_unbuilt_and_rebuilds_identically(tmp_path):
  fx.write_cub(tmp_path / "manual")
  args = _build_args("cub_paired", tmp_path / "data", manual_dir=tmp_path / "manual")
  killed = _run_build(args, prefix=_SELF_KILL)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
  leftover = _assert_reads_as_unbuilt(registry.get_builder("cub_paired", str(tmp_path / "data")))
  assert {p.name.split(".")[0] for p in leftover.iterdir()} >= {"cub_paired-train", "cub_paired-validation"}
  reference = registry.prepare("cub_paired", str(tmp_path / "reference"), manual_dir=str(tmp_path / "manual"))
  _rebuild_and_compare(args, leftover, reference)
