"""Bad inputs that tests/test_cli.py does not run through `cqd_jax.main`: a full disk while writing an output,
and split names that the data set does not have.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import os

import pytest

from cqd_jax import config_lib
from cqd_jax import fileio
import helpers

ROOM = 10  # Bytes a "full disk" still takes before a write fails.


class _FullDiskFile:
  """A file opened for writing on a disk with ROOM bytes left: the first write stores those and fails."""

  def __init__(self, f):
    self.f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.f.close()

  def write(self, data):
    self.f.write(data[:ROOM])
    self.f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
  """fileio's writes fail with ENOSPC after ROOM bytes, as on a full disk."""
  monkeypatch.setattr(fileio, "open", lambda path, mode="r": _FullDiskFile(builtins.open(path, mode)),
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
