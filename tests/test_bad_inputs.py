"""Bad inputs that tests/test_cli.py does not run through `cqd_jax.main`: a full disk while writing an output,
split names that the data set does not have, and bad options or files given to `python -m data_prep.build`.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import os
import subprocess
import sys

import pytest

from cqd_jax import config_lib
from cqd_jax import fileio
from cqd_jax.data import registry
import fixtures_real as fx
import helpers

ROOM = helpers.FULL_DISK_ROOM


@pytest.fixture
def full_disk(monkeypatch):
  """fileio's writes fail with ENOSPC after ROOM bytes, as on a full disk."""
  monkeypatch.setattr(fileio, "open", lambda path, mode="r": helpers.FullDiskFile(builtins.open(path, mode)),
                      raising=False)


@pytest.mark.parametrize("old", [None, "the previous, complete contents"])
def test_write_text_on_a_full_disk_leaves_the_old_file(tmp_path, full_disk, old):
  target = tmp_path / "results.md"
  if old is not None:
    target.write_text(old)
  with pytest.raises(OSError) as e:
    fileio.write_text(str(target), "| method | test |\n" * 100)
  assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
  assert "No space left on device" in str(e.value) and str(target) in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ([] if old is None else ["results.md"])  # No temporary file left.
  if old is not None:
    assert target.read_text() == old


def test_atomic_path_names_the_target_of_any_failed_write(tmp_path):
  """A writer of its own (np.savez, savefig) that fails on a full disk: the error names the target."""
  target = tmp_path / "weights.npz"
  with pytest.raises(OSError) as e:
    with fileio.atomic_path(str(target)) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"\x00" * ROOM)
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
  assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
  assert os.listdir(tmp_path) == []


def _demo_config():
  spec = importlib.util.spec_from_file_location("demo", os.path.join(helpers.REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("lowres")


@pytest.mark.parametrize("split", ["test", "validation", "train[:90%]", "test[:8]"])
def test_split_names_and_slices_are_accepted(split):
  config = _demo_config()
  config.eval_split = split
  config_lib.validate(config)


@pytest.mark.parametrize("key, split, match", [
    ("eval_split", "val", r"config key eval_split='val': .*no split 'val'; available: train, validation, test"),
    ("eval_split", "test+train", r"config key eval_split='test\+train': .*no split 'test\+train'"),
    ("eval_split", "test[:5%", r"config key eval_split='test\[:5%': malformed split"),
    ("validation_split", "valid", r"config key validation_split='valid': .*no split 'valid'; available: train"),
])
def test_missing_split_names_the_key_and_the_splits(key, split, match):
  config = _demo_config()
  config[key] = split
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)


def _build(data_dir, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "data_prep.build", f"--data_dir={data_dir}", *args],
                        cwd=helpers.REPO, env=helpers.subprocess_env(), capture_output=True, text=True, timeout=120)


def _corrupt_cub(manual) -> None:
  root = fx.write_cub(manual)
  (root / "images" / fx.cub_filename(fx.images(fx.CUB_COUNTS)[5])).write_bytes(b"not an image")


@pytest.mark.slow
@pytest.mark.parametrize("args, culprits", [
    (["--dataset=cqd_synthetic", "--num_classes=50"], ["num_classes", "[2, 20]", "50"]),
    (["--dataset=cqd_synthetic", "--test_per_class=0"], ["test_per_class", ">= 1"]),
    (["--dataset=cub_paired", "--num_classes=5"], ["cub_paired", "num_classes", "takes none"]),
    (["--dataset=cub_paired", "--manual_dir={tmp}/nowhere"], ["{tmp}/nowhere", "does not exist or is empty"]),
    (["--dataset=cub_paired", "--manual_dir={tmp}/manual"], ["corrupt image", "Laysan_Albatross_0006_5.jpg"]),
], ids=["bad_option", "empty_split", "option_of_another_data_set", "absent_manual_dir", "corrupt_image"])
def test_build_errors_are_one_line(tmp_path, args, culprits):
  if "--manual_dir={tmp}/manual" in args:
    _corrupt_cub(tmp_path / "manual")
  result = _build(tmp_path / "data", *(a.format(tmp=tmp_path) for a in args))
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-4000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  for culprit in culprits:
    assert culprit.format(tmp=tmp_path) in line, line
  assert not list((tmp_path / "data").glob("**/1.0.0"))  # No data set version directory.


@pytest.mark.slow
def test_build_error_with_verbose_shows_the_traceback(tmp_path):
  result = _build(tmp_path / "data", "--dataset=cqd_synthetic", "--num_classes=50", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr and "num_classes" in result.stderr


def test_missing_manual_files_name_the_key_that_sets_them(tmp_path):
  """A data set built from the user's files, with none given: the error names the flag or config key to set."""
  with pytest.raises(FileNotFoundError, match=r"cars_paired is not built in .*does not exist or is empty; set "
                                       r"--config\.dataset\.manual_dir=<folder> \(Put in manual_dir the official"):
    registry.prepare("cars_paired", str(tmp_path / "data"), manual_dir_flag="--config.dataset.manual_dir")


def test_tfds_build_is_quiet_without_progress_bars(tmp_path, capfd):
  options = dict(num_classes=2, image_size=32, train_per_class=2, validation_per_class=1, test_per_class=1, seed=0)
  registry.prepare("cqd_synthetic", str(tmp_path / "quiet"), progress=False, **options)
  quiet = capfd.readouterr()
  assert "Generating" not in quiet.err and "prepared" not in quiet.out
  registry.prepare("cqd_synthetic", str(tmp_path / "shown"), **options)
  shown = capfd.readouterr()
  assert "Generating" in shown.err and "Downloading and preparing" in shown.out
