"""TFDS builder `cars_paired`: Stanford Cars images with their car boxes, for high-quality / degraded pairs.

Like `cub_paired` (see paired.py, whose shared helpers this uses): images stored as JPEG bytes without
TensorFlow, any subset of classes with the ids that occur mapped to labels 0..K-1 in id order and named by
devkit/cars_meta.mat ('AM General Hummer SUV 2000'), one config (so one subset per data_dir), `test` the
official test split and `validation` VALIDATION_PERCENT of each class's official train images.

The devkit's boxes are 1-based inclusive pixel corners (bbox_x1, bbox_y1, bbox_x2, bbox_y2), so a box of the
whole W x H image, (1, 1, W, H), normalises to (0, 0, 1, 1). Cars has no image ids: `image_id` is the file's
path without extension, e.g. 'cars_train/00001'.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from etils import epath
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from cqd_jax.data import paired

_TRAIN, _TEST, _DEVKIT = "cars_train", "cars_test", "devkit"
_TRAIN_ANNOTATIONS = "cars_train_annos.mat"  # In devkit/.
_META = "cars_meta.mat"  # In devkit/.
_TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"  # In manual_dir itself.
# Each entry is a folder or its archive, or a file.
_EXPECTED = [(_TRAIN, f"{_TRAIN}.tgz"), (_TEST, f"{_TEST}.tgz"), (_DEVKIT, "car_devkit.tgz"),
             (_TEST_ANNOTATIONS,)]
_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _load_mat(data: bytes, where: str) -> dict:
  try:
    return scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
  except Exception as e:  # scipy raises many kinds of errors for a file that is not a .mat file.
    raise ValueError(f"corrupt .mat file {where}: {e}") from e


def _records(mat: dict, where: str, folder: str, is_train: bool) -> list[paired.Record]:
  """The images of `folder` listed in annotation file `where` (struct array `annotations`)."""
  if "annotations" not in mat:
    raise ValueError(f"{where} has no 'annotations' struct array")
  records = []
  for i, a in enumerate(np.atleast_1d(mat["annotations"])):
    try:
      fname, class_id = str(a["fname"]), int(a["class"])
      x1, y1, x2, y2 = (float(a[f]) for f in _BOX_FIELDS)
    except (ValueError, TypeError, IndexError, KeyError) as e:
      raise ValueError(f"{where}: malformed annotations[{i}] ({e!r}); expected fields "
                       f"{', '.join(_BOX_FIELDS)}, class, fname") from None
    stem = fname.rsplit(".", 1)[0]
    records.append(paired.Record(image_id=f"{folder}/{stem}", filename=f"{folder}/{fname}", member=fname,
                              class_id=class_id, box=(x1 - 1, y1 - 1, x2, y2), is_train=is_train))
  return records


class CarsPaired(tfds.core.GeneratorBasedBuilder):
  """Stanford Cars (or any subset of its classes) with car boxes; train/validation/test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
      Put in manual_dir the official cars_train.tgz, cars_test.tgz, car_devkit.tgz (or their extracted folders
      {_TRAIN}/, {_TEST}/, {_DEVKIT}/ with {_TRAIN_ANNOTATIONS} and {_META}) and {_TEST_ANNOTATIONS}.
      """
  # See synthetic_tfds.py: TFDS's own lookup of this file needs the absent `importlib_resources`.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=paired.features(tfds.features.Text()),
        supervised_keys=("image", "label"),
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        citation="Krause et al., 3D Object Representations for Fine-Grained Categorization, 3dRR 2013.",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    train, test, devkit, test_annotations = paired.locate(paired.manual_dir(dl_manager), _EXPECTED,
                                                       self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    devkit = paired.Tree(devkit, _DEVKIT)
    mats = {name: _load_mat(data, devkit.describe(name))
            for name, data in devkit.read([_TRAIN_ANNOTATIONS, _META])}
    if "class_names" not in mats[_META]:
      raise ValueError(f"{devkit.describe(_META)} has no 'class_names'")
    names = {i: str(name) for i, name in enumerate(np.atleast_1d(mats[_META]["class_names"]), 1)}
    test_mat = _load_mat(test_annotations.read_bytes(), str(test_annotations))
    records = (_records(mats[_TRAIN_ANNOTATIONS], devkit.describe(_TRAIN_ANNOTATIONS), _TRAIN, is_train=True) +
               _records(test_mat, str(test_annotations), _TEST, is_train=False))
    labels = paired.set_labels(self.info, records, names)
    train_tree, test_tree = paired.Tree(train, _TRAIN), paired.Tree(test, _TEST)
    trees = {"train": train_tree, "validation": train_tree, "test": test_tree}
    return {split: self._generate_examples(trees[split], rs, labels)
            for split, rs in paired.split_records(records).items()}

  def _generate_examples(self, tree: paired.Tree, records: Sequence[paired.Record], labels: Mapping[int, int]):
    return paired.generate_examples(tree, records, labels)
