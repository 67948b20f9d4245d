"""TFDS builder `cub_paired`: CUB-200-2011 images with their bird boxes, for high-quality / degraded pairs.

Each example holds the whole image and the bird's box, so the teacher's view (the box crop) and the student's
(e.g. the whole image, or a degraded crop) are both made from it at train time. Built from manually
downloaded files, without TensorFlow: images are stored as JPEG bytes, the original bytes when the source is
an RGB JPEG, else re-encoded as RGB JPEG with PIL (grayscale, CMYK, PNG named .jpg).

Any subset of classes in the official layout can be built (e.g. only 001-025): the class ids that occur are
mapped to labels 0..K-1 in id order and keep their official names ('001.Black_footed_Albatross'). There is
one config, so a different subset must be built into a different data_dir.

Splits: `test` is the official test split; `validation` is VALIDATION_PERCENT of each class's official train
images (see `split_records`), `train` the rest of them. Records are in TFDS's order of hashed keys (the file
names), the same whether the files were read from folders or archives.

The helpers shared with cars.py (reading folders or archives, records to examples) are in paired.py.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cqd_jax.data import paired

# CUB-200-2011.

_FOLDER = "CUB_200_2011"
_ARCHIVE = "CUB_200_2011.tgz"


def _flag(value: str) -> bool:
  if value not in ("0", "1"):
    raise ValueError(f"not 0 or 1: {value!r}")
  return value == "1"


# Annotation files: columns after the leading id, with their parsers.
_COLUMNS: dict[str, tuple[tuple[str, Callable[[str], Any]], ...]] = {
    "classes.txt": (("class_name", str),),
    "images.txt": (("image_name", str),),
    "image_class_labels.txt": (("class_id", int),),
    "train_test_split.txt": (("is_training_image", _flag),),
    "bounding_boxes.txt": (("x", float), ("y", float), ("width", float), ("height", float)),
}


def _parse(text: str, columns: Sequence[tuple[str, Callable[[str], Any]]], where: str) -> dict[int, tuple]:
  """Lines '<id> <column>...' by id; a malformed or repeated line is an error naming `where` and the line."""
  rows = {}
  expected = " ".join(f"<{c}>" for c, _ in (("id", int), *columns))
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split()
    try:
      if len(fields) != len(columns) + 1:
        raise ValueError(f"{len(fields)} fields")
      key, values = int(fields[0]), tuple(parse(f) for (_, parse), f in zip(columns, fields[1:]))
    except ValueError as e:
      raise ValueError(f"{where}:{number}: malformed line {line!r} ({e}); expected '{expected}'") from None
    if key in rows:
      raise ValueError(f"{where}:{number}: id {key} repeats an earlier line")
    rows[key] = values
  return rows


def read_annotations(tree: paired.Tree) -> tuple[list[paired.Record], dict[int, str]]:
  """The records of every image in images.txt and the class names by id, from the five annotation files."""
  tables = {name: _parse(data.decode(), _COLUMNS[name], tree.describe(name))
            for name, data in tree.read(_COLUMNS)}
  names = {class_id: name for class_id, (name,) in tables.pop("classes.txt").items()}
  images = tables.pop("images.txt")
  for file, table in tables.items():
    if absent := sorted(images.keys() - table.keys()):
      raise ValueError(f"{tree.describe(file)} has no line for image id(s) {absent[:paired._MAX_LISTED]} of "
                       "images.txt")
  records = []
  for image_id, (filename,) in sorted(images.items()):
    x, y, w, h = tables["bounding_boxes.txt"][image_id]
    records.append(paired.Record(image_id=image_id, filename=filename, member=f"images/{filename}",
                          class_id=tables["image_class_labels.txt"][image_id][0], box=(x, y, x + w, y + h),
                          is_train=tables["train_test_split.txt"][image_id][0]))
  return records, names


class CubPaired(tfds.core.GeneratorBasedBuilder):
  """CUB-200-2011 (or any subset of its classes) with bird boxes; train/validation/test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
      Put in manual_dir either the official archive {_ARCHIVE} or its extracted folder {_FOLDER}/, which
      holds {', '.join(_COLUMNS)} and images/ (any subset of the classes, in the official layout).
      """
  # See synthetic_tfds.py: TFDS's own lookup of this file needs the absent `importlib_resources`.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=paired.features(np.int64),
        supervised_keys=("image", "label"),
        homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        citation="Wah et al., The Caltech-UCSD Birds-200-2011 Dataset, CNS-TR-2011-001, Caltech, 2011.",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    [path] = paired.locate(paired.manual_dir(dl_manager), [(_FOLDER, _ARCHIVE)], self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    tree = paired.Tree(path, _FOLDER)
    records, names = read_annotations(tree)
    labels = paired.set_labels(self.info, records, names)
    return {split: self._generate_examples(tree, rs, labels) for split, rs in paired.split_records(records).items()}

  def _generate_examples(self, tree: paired.Tree, records: Sequence[paired.Record], labels: Mapping[int, int]):
    return paired.generate_examples(tree, records, labels)
