"""Input pipelines on TFDS array_record data sets: a grain loader for training, ordered padded batches for eval.

Examples come out as numpy dicts: image uint8 [S, S, 3], label int32, bbox float32 [4] (ymin, xmin, ymax,
xmax in [0, 1]). Augmentation happens on device in the train step, so the only transform here is an optional
resize to a fixed `image_size` (boxes are normalised, so they do not change).

The train iterator is checkpointable with Orbax next to the model state:

  it = iter(train_loader(builder, "train", batch_size=b, seed=0))
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                             data=grain.checkpoint.CheckpointRestore(it)))  # sets `it` in place
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# TFDS advises installing OpenCV the first time it decodes an image; PIL decodes ours fine (cv2 is not a dependency).
logging.getLogger("absl").addFilter(lambda record: not str(record.msg).startswith("OpenCV is not installed"))

Batch = dict[str, np.ndarray]


def _check(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Clear errors for a data set that is not built and for a split (base name of e.g. 'train[:90%]') it lacks."""
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data set {builder.info.full_name} is not built in {builder.data_path}; build it with "
        f"`python -m data_prep.build --dataset={builder.name} --data_dir={builder.data_dir_root}` and the "
        f"same options (or cqd_jax.data.registry.prepare).")
  available = list(builder.info.splits.keys())
  if split.split("[")[0] not in available:
    raise ValueError(f"split {split!r} not in data set {builder.info.full_name}; available: "
                     f"{', '.join(available)}")


class _Records:
  """A split as a random-access source of decoded examples (see `_decode`), each with "record": its position
  in the split, which names a training example across epochs and shuffles (e.g. for cached teacher logits).

  Decoded examples are kept in memory up to `cache_bytes` (per process: each grain worker keeps its own), so
  that later epochs skip reading, parsing and decoding: on the 2-core machine that made the demo's loader
  about 2.8x faster (benchmarks/README.md). Cached or not, the same records come out.
  """

  def __init__(self, source: Sequence[dict[str, Any]], image_size: int | None, cache_bytes: int = 0):
    self._source = source
    self._image_size = image_size
    self._cache_bytes = cache_bytes
    self._cache: dict[int, dict[str, np.ndarray]] = {}
    self._cached_bytes = 0

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self._cache.get(index)
    if example is None:
      example = self._decoded(index, self._source[index])
    return dict(example)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """The examples at `indices`, the uncached ones read in one batched read."""
    missing = [i for i in indices if i not in self._cache]
    fresh = {i: self._decoded(i, raw) for i, raw in zip(missing, self._source.__getitems__(missing))} if missing else {}
    return [dict(self._cache.get(i) or fresh[i]) for i in indices]

  def _decoded(self, index: int, raw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Record `index` (`raw`, as read) decoded, and kept if the cache has room for it."""
    example = _decode({**raw, "record": index}, self._image_size)
    size = sum(v.nbytes for v in example.values())
    if self._cached_bytes + size <= self._cache_bytes:  # read threads may race here: at worst one extra
      self._cache[index] = example
      self._cached_bytes += size
    return example

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_cache": {}, "_cached_bytes": 0}  # a grain worker starts with its own cache

  def __repr__(self) -> str:
    # grain stores the source's repr in iterator checkpoints and refuses to restore into another one, so it
    # must be the same in every process that reads this split (the default repr has the object's address).
    # The name is the one iterator checkpoints have held since the first release, so they still restore.
    return f"_WithRecordIndex({self._source!r})"


def _records(builder: tfds.core.DatasetBuilder, split: str, image_size: int | None,
             cache_bytes: int = 0) -> _Records:
  """The decoded examples of `split` (TFDS ArrayRecordDataSource underneath) with their record index."""
  _check(builder, split)
  return _Records(builder.as_data_source(split=split), image_size, cache_bytes)


def _decode(example: dict[str, Any], image_size: int | None) -> dict[str, np.ndarray]:
  """TFDS example -> image uint8 [S, S, 3], label int32, bbox float32 [4], record int32 (position in the
  split); the image resized to image_size if given."""
  image = np.asarray(example["image"])
  if image_size and image.shape[:2] != (image_size, image_size):
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR))
  return {"image": image, "label": np.int32(example["label"]),
          "bbox": np.asarray(example["bbox"], np.float32), "record": np.int32(example["record"])}


def read_threads() -> int:
  """Threads reading (and decoding) records per process: one per core, at most grain's default of 16, which
  halves throughput on small (2-core) machines."""
  return min(16, os.cpu_count() or 1)


def train_loader(builder: tfds.core.DatasetBuilder, split: str, *, batch_size: int, seed: int,
                 image_size: int | None = None, worker_count: int = 0, cache_mb: float = 0,
                 shard_options: grain.sharding.ShardOptions | None = None) -> grain.DataLoader:
  """Endless stream of batches of `batch_size` examples (per JAX process), reshuffled every epoch from `seed`.

  `shard_options` defaults to one shard per JAX process. `worker_count` > 0 decodes in that many grain
  worker processes. Up to `cache_mb` MiB of decoded examples are kept in memory per process (0: none).
  `iter(loader)` is a checkpointable `grain.DataLoaderIterator` (see module docstring).
  """
  source = _records(builder, split, image_size, cache_bytes=int(cache_mb * 2**20))
  shard_options = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard_options,
                                        shuffle=True, num_epochs=None, seed=seed)
  read_options = grain.ReadOptions(num_threads=read_threads())
  return grain.DataLoader(
      data_source=source, sampler=sampler, worker_count=worker_count, read_options=read_options,
      operations=[grain.transforms.Batch(batch_size, drop_remainder=True)])


def _stack_padded(examples: list[dict[str, np.ndarray]], size: int, template: dict[str, np.ndarray]) -> Batch:
  """`examples` stacked and zero-padded to `size` rows (`template` gives the shapes), plus `mask` (True for
  real examples)."""
  batch = {k: np.zeros((size, *np.shape(v)), np.asarray(v).dtype) for k, v in template.items()}
  for i, example in enumerate(examples):
    for k, v in example.items():
      batch[k][i] = v
  batch["mask"] = np.arange(size) < len(examples)
  return batch


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, *, batch_size: int, image_size: int | None = None,
                 shard_options: grain.sharding.ShardOptions | None = None) -> Iterator[Batch]:
  """One ordered pass over `split` in batches of `batch_size` (global), the last padded; `mask` marks real
  examples.

  Each shard (`shard_options`, default one per JAX process) yields its own contiguous `batch_size / shard_count`
  rows of every batch, and every shard yields the same number of batches (so each process takes part in
  every evaluation step): train.shard_batch puts the shards together, in process order, into exactly the
  single-process batch, so evaluation gives the same numbers on any number of hosts.
  """
  shard_options = shard_options or grain.sharding.ShardByJaxProcess()
  index, count = shard_options.shard_index, shard_options.shard_count
  if batch_size <= 0 or batch_size % count:
    raise ValueError(f"eval batch size {batch_size} must be a positive multiple of the shard (process) count "
                     f"({count})")
  source = _records(builder, split, image_size)
  template = source[0]
  local = batch_size // count
  for start in range(0, len(source), batch_size):
    first = min(start + index * local, len(source))
    rows = range(first, min(first + local, len(source)))
    examples = source.__getitems__(rows) if rows else []
    yield _stack_padded(examples, local, template)


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Number of examples in `split` (slices such as 'train[:90%]' allowed)."""
  _check(builder, split)
  return builder.info.splits[split].num_examples


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  """Number of classes of the `label` feature."""
  return builder.info.features["label"].num_classes


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Class names, indexed by label."""
  return list(builder.info.features["label"].names)
