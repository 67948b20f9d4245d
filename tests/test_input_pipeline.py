"""Tests for the cqd_synthetic TFDS builder, the data set registry and the grain input pipeline."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from cqd_jax import input_pipeline
from cqd_jax.data import registry
from cqd_jax.data import synthetic
from cqd_jax.data import synthetic_tfds

REPO = pathlib.Path(__file__).resolve().parents[1]
OPTIONS = dict(num_classes=4, image_size=32, train_per_class=3, validation_per_class=2, test_per_class=2)
SPEC = synthetic.SyntheticSpec(**OPTIONS)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  return registry.prepare("cqd_synthetic", str(tmp_path_factory.mktemp("data")), **OPTIONS)


def _run_python(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter, so that its sys.modules and its exit are its own."""
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_counts_and_classes(builder):
  for split in synthetic.SPLITS:
    assert input_pipeline.num_examples(builder, split) == SPEC.num_examples(split)
  assert input_pipeline.num_examples(builder, "train[:50%]") == SPEC.num_examples("train") // 2
  assert input_pipeline.num_classes(builder) == 4
  assert input_pipeline.class_names(builder) == synthetic.class_names(SPEC)


def test_records_equal_generator(builder):
  for split in synthetic.SPLITS:
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      record, expected = source[i], synthetic.make_example(SPEC, split, i)
      assert record["index"] == i  # Stored in generation order.
      assert record["label"] == expected["label"]
      np.testing.assert_array_equal(record["bbox"], expected["bbox"])
      np.testing.assert_array_equal(record["image"], expected["image"])  # PNG is lossless.


def test_each_spec_has_its_own_config_and_dir(tmp_path):
  other = dataclasses.replace(SPEC, seed=1)
  assert synthetic_tfds.config_name(SPEC) == "c4_s32_n3-2-2_seed0"
  assert synthetic_tfds.spec_from_config_name(synthetic_tfds.config_name(other)) == other
  a = registry.get_builder("cqd_synthetic", str(tmp_path), **OPTIONS)
  b = registry.get_builder("cqd_synthetic", str(tmp_path), **{**OPTIONS, "seed": 1})
  assert a.data_path != b.data_path
  by_name = tfds.builder("cqd_synthetic/c4_s32_n3-2-2_seed1", data_dir=str(tmp_path))
  assert by_name.data_path == b.data_path and by_name.spec == other


def test_prepare_is_idempotent(builder, monkeypatch):
  files = sorted(builder.data_path.iterdir())
  mtimes = [os.stat(f).st_mtime_ns for f in files]

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt a built data set")

  monkeypatch.setattr(synthetic_tfds.CqdSynthetic, "_generate_examples", fail)
  again = registry.prepare("cqd_synthetic", str(builder.data_dir_root), **OPTIONS)
  assert again.data_path == builder.data_path
  assert sorted(builder.data_path.iterdir()) == files
  assert [os.stat(f).st_mtime_ns for f in files] == mtimes


def test_failed_build_leaves_no_complete_data_set(tmp_path, monkeypatch):
  def crash(self, split):
    yield 0, {"image": synthetic_tfds._png(np.zeros((32, 32, 3), np.uint8)), "label": 0,
              "bbox": np.array([0, 0, 1, 1], np.float32), "index": 0}
    raise RuntimeError("interrupted")

  with monkeypatch.context() as m:
    m.setattr(synthetic_tfds.CqdSynthetic, "_generate_examples", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
      registry.prepare("cqd_synthetic", str(tmp_path), **OPTIONS)
  unbuilt = registry.get_builder("cqd_synthetic", str(tmp_path), **OPTIONS)
  assert not unbuilt.is_prepared() and not unbuilt.data_path.exists()
  assert not list(unbuilt.data_path.parent.iterdir())  # TFDS removed its incomplete.* dir.
  with pytest.raises(FileNotFoundError, match="python -m data_prep.build --dataset=cqd_synthetic"):
    input_pipeline.train_loader(unbuilt, "train", batch_size=4, seed=0)
  assert registry.prepare("cqd_synthetic", str(tmp_path), **OPTIONS).is_prepared()


@pytest.mark.slow
def test_killed_build_leaves_no_complete_data_set(tmp_path):
  code = f"""
      import os
      from cqd_jax.data import registry, synthetic
      make_example = synthetic.make_example
      def die(spec, split, index):
        if index == 2:
          os._exit(3)  # Like SIGKILL: no cleanup runs.
        return make_example(spec, split, index)
      synthetic.make_example = die
      registry.prepare("cqd_synthetic", {str(tmp_path)!r}, **{OPTIONS!r})
  """
  assert _run_python(code, tmp_path).returncode == 3
  unbuilt = registry.get_builder("cqd_synthetic", str(tmp_path), **OPTIONS)
  assert not unbuilt.is_prepared() and not unbuilt.data_path.exists()
  assert [p.name.startswith("incomplete.") for p in unbuilt.data_path.parent.iterdir()] == [True]
  assert registry.prepare("cqd_synthetic", str(tmp_path), **OPTIONS).is_prepared()


@pytest.mark.slow
def test_build_and_read_do_not_import_tensorflow(tmp_path):
  code = f"""
      import sys
      from cqd_jax import input_pipeline
      from cqd_jax.data import registry
      builder = registry.prepare("cqd_synthetic", {str(tmp_path)!r}, **{OPTIONS!r})
      next(iter(input_pipeline.train_loader(builder, "train", batch_size=4, seed=0)))
      next(input_pipeline.eval_batches(builder, "test", batch_size=4))
      print("tensorflow" in sys.modules)
  """
  result = _run_python(code, tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == "False"


@pytest.mark.slow
def test_build_cli(tmp_path):
  args = [sys.executable, "-m", "data_prep.build", "--dataset=cqd_synthetic", f"--data_dir={tmp_path}"]
  args += [f"--{k}={v}" for k, v in OPTIONS.items()]
  for _ in range(2):  # The second run finds the data set built.
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 12 examples" in result.stdout and "test: 8 examples" in result.stdout


def test_train_loader_batches(builder):
  batch = next(iter(input_pipeline.train_loader(builder, "train", batch_size=5, seed=0)))
  assert batch.keys() == {"image", "label", "bbox", "record"}
  assert batch["image"].shape == (5, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (5,) and batch["label"].dtype == np.int32
  assert batch["bbox"].shape == (5, 4) and batch["bbox"].dtype == np.float32
  assert set(batch["label"]) <= set(range(4))
  # "record" names each example: its position in the split, whatever the shuffle.
  expected = synthetic.make_split(SPEC, "train")
  assert batch["record"].dtype == np.int32 and len(set(batch["record"])) == 5
  np.testing.assert_array_equal(batch["label"], expected["label"][batch["record"]])
  np.testing.assert_array_equal(batch["image"], expected["image"][batch["record"]])


def test_train_loader_resizes(builder):
  full = next(iter(input_pipeline.train_loader(builder, "train", batch_size=4, seed=0)))
  resized = next(iter(input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, image_size=40)))
  assert resized["image"].shape == (4, 40, 40, 3) and resized["image"].dtype == np.uint8
  np.testing.assert_array_equal(resized["bbox"], full["bbox"])
  np.testing.assert_array_equal(resized["label"], full["label"])


def test_train_loader_is_infinite_and_seeded(builder):
  def first_batches(seed):
    return _take(iter(input_pipeline.train_loader(builder, "train", batch_size=4, seed=seed)), 6)

  a, b = first_batches(0), first_batches(0)
  _assert_batches_equal(a, b)
  c = first_batches(1)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # 6 batches of 4 are two epochs of 12 examples: each epoch holds every example once.
  for epoch in (a[:3], a[3:]):
    assert sorted(np.concatenate([x["label"] for x in epoch])) == sorted(np.arange(12) % 4)


def test_iterator_state_roundtrip(builder):
  loader = input_pipeline.train_loader(builder, "train", batch_size=5, seed=0)
  it = iter(loader)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = iter(loader)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)


def test_iterator_orbax_roundtrip(builder, tmp_path):
  loader = input_pipeline.train_loader(builder, "train", batch_size=5, seed=0)
  it = iter(loader)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = _take(it, 4)
  fresh = iter(loader)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() == 3
    restored = mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert restored["data"] is fresh
  _assert_batches_equal(_take(fresh, 4), expected)


@pytest.mark.parametrize("batch_size", [3, 8, 10])
def test_eval_batches_cover_split_once(builder, batch_size):
  batches = list(input_pipeline.eval_batches(builder, "test", batch_size=batch_size))
  assert len(batches) == -(-8 // batch_size)
  for b in batches:
    assert b["image"].shape == (batch_size, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and b["bbox"].dtype == np.float32 and b["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < 8)
  expected = synthetic.make_split(SPEC, "test")
  for k in ("image", "label", "bbox"):
    values = np.concatenate([b[k] for b in batches])
    np.testing.assert_array_equal(values[mask], expected[k])
    assert not values[~mask].any()  # Padding is zeros.
  np.testing.assert_array_equal(np.concatenate([b["record"] for b in batches])[mask], np.arange(8))


def test_unknown_data_set():
  with pytest.raises(ValueError, match="unknown data set 'nope'; known: cars_paired, cqd_synthetic, cub_paired"):
    registry.get_builder("nope", "/tmp")


def test_missing_split(builder):
  match = r"split 'val' not in .*available: train, validation, test"
  with pytest.raises(ValueError, match=match):
    input_pipeline.train_loader(builder, "val", batch_size=4, seed=0)
  with pytest.raises(ValueError, match=match):
    next(input_pipeline.eval_batches(builder, "val", batch_size=4))
  with pytest.raises(ValueError, match=match):
    input_pipeline.num_examples(builder, "val")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_process_matches_in_process(builder):
  def batches(worker_count):
    loader = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, worker_count=worker_count)
    return _take(iter(loader), 5)

  _assert_batches_equal(batches(1), batches(0))


def test_cached_loader_gives_the_same_batches(builder):
  # 5 batches of 4 are about two epochs of 12 examples: the second is read from the cache.
  cached = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, image_size=40, cache_mb=1)
  plain = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, image_size=40)
  _assert_batches_equal(_take(iter(cached), 5), _take(iter(plain), 5))
  assert len(cached._data_source._cache) == 12 and not plain._data_source._cache
  # A fresh iterator (e.g. after a restore) reads from the same cache.
  _assert_batches_equal(_take(iter(cached), 5), _take(iter(plain), 5))
  # The cache never grows past its budget: 40 * 40 * 3 image bytes + 24 bytes of label, bbox and record.
  small = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, image_size=40,
                                      cache_mb=3.5 * 4824 / 2**20)
  _assert_batches_equal(_take(iter(small), 5), _take(iter(plain), 5))
  assert len(small._data_source._cache) == 3


def test_cached_records_are_copies(builder):
  records = input_pipeline._records(builder, "train", None, cache_bytes=2**20)
  first = records[0]
  first["image"] = None
  assert records[0]["image"] is not None
  assert [ex["record"] for ex in records.__getitems__([2, 0, 2])] == [2, 0, 2]
  assert sorted(records._cache) == [0, 2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_process_with_cache_matches_in_process(builder):
  loader = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0, worker_count=1, cache_mb=1)
  plain = input_pipeline.train_loader(builder, "train", batch_size=4, seed=0)
  _assert_batches_equal(_take(iter(loader), 7), _take(iter(plain), 7))
