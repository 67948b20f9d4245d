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

import dataclasses
import os
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

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


class _WithRecordIndex:
  """A random-access source whose examples also carry "record": their position in the split.

  It names each training example across epochs and shuffles, e.g. for the teacher's cached logits.
  """

  def __init__(self, source: Sequence[dict[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**self._source[index], "record": index}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [{**ex, "record": i} for i, ex in zip(indices, self._source.__getitems__(indices))]

  def __repr__(self) -> str:
    # grain stores the source's repr in iterator checkpoints and refuses to restore into another one, so it
    # must be the same in every process that reads this split (the default repr has the object's address).
    return f"_WithRecordIndex({self._source!r})"


def _data_source(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[dict[str, Any]]:
  """Random-access source of decoded examples (TFDS ArrayRecordDataSource) with their record index."""
  _check(builder, split)
  return _WithRecordIndex(builder.as_data_source(split=split))


@dataclasses.dataclass(frozen=True)
class _Decode(grain.transforms.Map):
  """TFDS example -> image uint8 [S, S, 3], label int32, bbox float32 [4], record int32 (position in the
  split); the image resized to image_size if given."""

  image_size: int | None = None

  def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    image = np.asarray(example["image"])
    if self.image_size and image.shape[:2] != (self.image_size, self.image_size):
      image = np.asarray(Image.fromarray(image).resize((self.image_size, self.image_size),
                                                       Image.Resampling.BILINEAR))
    return {"image": image, "label": np.int32(example["label"]),
            "bbox": np.asarray(example["bbox"], np.float32), "record": np.int32(example["record"])}


def read_threads() -> int:
  """Threads reading (and decoding) records per process: one per core, at most grain's default of 16, which
  halves throughput on small (2-core) machines."""
  return min(16, os.cpu_count() or 1)


def train_loader(builder: tfds.core.DatasetBuilder, split: str, *, batch_size: int, seed: int,
                 image_size: int | None = None, worker_count: int = 0,
                 shard_options: grain.sharding.ShardOptions | None = None) -> grain.DataLoader:
  """Endless stream of batches of `batch_size` examples (per JAX process), reshuffled every epoch from `seed`.

  `shard_options` defaults to one shard per JAX process. `worker_count` > 0 decodes in that many grain
  worker processes. `iter(loader)` is a checkpointable `grain.DataLoaderIterator` (see module docstring).
  """
  source = _data_source(builder, split)
  shard_options = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard_options,
                                        shuffle=True, num_epochs=None, seed=seed)
  read_options = grain.ReadOptions(num_threads=read_threads())
  return grain.DataLoader(
      data_source=source, sampler=sampler, worker_count=worker_count, read_options=read_options,
      operations=[_Decode(image_size), grain.transforms.Batch(batch_size, drop_remainder=True)])


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
  source = _data_source(builder, split)
  decode = _Decode(image_size)
  template = decode.map(source[0])
  local = batch_size // count
  for start in range(0, len(source), batch_size):
    first = min(start + index * local, len(source))
    rows = range(first, min(first + local, len(source)))
    examples = [decode.map(ex) for ex in source.__getitems__(rows)] if rows else []
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
