"""Shared parts of the paired real-data builders (cub.py, cars.py): reading an official folder either
extracted or as its .tgz (`Tree`), the example features, the deterministic validation split, and turning
`Record`s into examples (RGB JPEG bytes, normalised boxes), with errors that name the file or member.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import posixpath
import tarfile
import textwrap
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence
import zlib

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

VALIDATION_PERCENT = 10
SPLITS = ("train", "validation", "test")  # What `split_records` makes.
JPEG_QUALITY = 95  # For images re-encoded to RGB JPEG.
_MAX_LISTED = 5  # Missing files named in an error.


@dataclasses.dataclass(frozen=True)
class Tree:
  """The files of one official folder, read from the extracted folder or from its .tgz archive.

  Names are relative to the folder: "images.txt" is `path`/images.txt for a folder and member
  "CUB_200_2011/images.txt" for an archive with `folder` "CUB_200_2011".
  """

  path: epath.Path
  folder: str = ""

  @property
  def is_archive(self) -> bool:
    return self.path.is_file()

  def describe(self, name: str) -> str:
    """Where file `name` is, for error messages."""
    return f"{self.path}:{self.folder}/{name}" if self.is_archive else str(self.path / name)

  def read(self, names: Collection[str]) -> Iterator[tuple[str, bytes]]:
    """Yields (name, contents) of `names` in storage order; a missing or unreadable file is an error naming it.

    An archive is streamed once (and only until every name is found), so a .tgz is never extracted to disk.
    """
    missing = set(names)
    for name, data in self._read_archive(missing) if self.is_archive else self._read_folder(missing):
      missing.discard(name)
      yield name, data
    if missing:
      listed = ", ".join(self.describe(n) for n in sorted(missing)[:_MAX_LISTED])
      more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
      raise FileNotFoundError(f"missing {len(missing)} file(s): {listed}{more}")

  def _read_folder(self, names: Collection[str]) -> Iterator[tuple[str, bytes]]:
    for name in sorted(names):
      if (self.path / name).is_file():
        yield name, (self.path / name).read_bytes()

  def _read_archive(self, names: Collection[str]) -> Iterator[tuple[str, bytes]]:
    wanted, prefix, current = set(names), self.folder + "/", "(start)"
    try:
      with self.path.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
          current = member.name
          name = posixpath.normpath(member.name)
          if member.isfile() and name.startswith(prefix) and name[len(prefix):] in wanted:
            wanted.discard(name[len(prefix):])
            yield name[len(prefix):], tar.extractfile(member).read()
            if not wanted:
              return
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
      raise ValueError(f"archive {self.path} is truncated or corrupt at member {current!r}: {e}") from e


def manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path:
  """`dl_manager.manual_dir`, raising FileNotFoundError (TFDS raises AssertionError) when absent or empty."""
  try:
    return dl_manager.manual_dir
  except AssertionError as e:
    raise FileNotFoundError(str(e)) from None


def locate(directory: epath.Path, expected: Sequence[tuple[str, ...]], instructions: str) -> list[epath.Path]:
  """For each entry of `expected`, the first of its alternative names present in `directory`.

  One error lists every absent entry, `directory` and `instructions`.
  """
  found = [next((directory / n for n in names if (directory / n).exists()), None) for names in expected]
  if missing := [" or ".join(names) for names, path in zip(expected, found) if path is None]:
    raise FileNotFoundError(f"missing in manual_dir {directory}: {'; '.join(missing)}.\n"
                            f"{textwrap.dedent(instructions)}")
  return found


@dataclasses.dataclass(frozen=True)
class Record:
  """One annotated image: where it is, its official class and split, and its box in pixels."""

  image_id: int | str
  filename: str  # Path in the official layout; the `filename` feature and the record key.
  member: str  # Name of the image in its Tree.
  class_id: int  # Official class id.
  box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels, 0-based, max exclusive.
  is_train: bool  # In the official train split.


def features(image_id: Any) -> tfds.features.FeaturesDict:
  """Features of both paired builders; `image_id` is that feature's type. `set_labels` names the labels."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(),
      "bbox": tfds.features.BBoxFeature(),
      "image_id": image_id,
      "filename": tfds.features.Text(),
  })


def set_labels(info: tfds.core.DatasetInfo, records: Iterable[Record],
               names: Mapping[int, str]) -> dict[int, int]:
  """Maps the class ids that occur to labels 0..K-1 in id order, names the labels in `info`, returns the map."""
  ids = sorted({r.class_id for r in records})
  if unnamed := [i for i in ids if i not in names]:
    raise ValueError(f"class ids {unnamed} have images but no name")
  info.features["label"].names = [names[i] for i in ids]
  return {class_id: label for label, class_id in enumerate(ids)}


def _hash(filename: str) -> str:
  return hashlib.sha256(filename.encode()).hexdigest()


def split_records(records: Iterable[Record],
                  validation_percent: int = VALIDATION_PERCENT) -> dict[str, list[Record]]:
  """Official test -> `test`; official train -> `validation` + `train`.

  `validation` takes round(validation_percent% of n) of each class's n train images (half up: 1 of 5, 3 of
  25), those first in sha256(filename) order, so it depends only on that class's own train images.
  """
  splits: dict[str, list[Record]] = {split: [] for split in SPLITS}
  by_class: dict[int, list[Record]] = {}
  for r in records:
    if r.is_train:
      by_class.setdefault(r.class_id, []).append(r)
    else:
      splits["test"].append(r)
  for rs in by_class.values():
    rs = sorted(rs, key=lambda r: _hash(r.filename))
    n_validation = (len(rs) * validation_percent + 50) // 100
    splits["validation"] += rs[:n_validation]
    splits["train"] += rs[n_validation:]
  if empty := [split for split, rs in splits.items() if not rs]:
    raise ValueError(f"no images for split(s) {', '.join(empty)}; validation takes {validation_percent}% "
                     "(rounded half up) of each class's official train images")
  return splits


def rgb_jpeg(data: bytes, where: str) -> tuple[bytes, int, int]:
  """(RGB JPEG bytes, height, width) of image `data`: `data` itself when already an RGB JPEG.

  Decodes the whole image, so that a truncated or corrupt one is an error naming `where`.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.format == "JPEG" and image.mode == "RGB":
        return data, image.height, image.width
      buf = io.BytesIO()
      image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
      return buf.getvalue(), image.height, image.width
  except (OSError, SyntaxError, ValueError) as e:  # What PIL raises for data it cannot decode.
    raise ValueError(f"truncated or corrupt image {where}: {e}") from e


def normalized_box(box: tuple[float, float, float, float], height: int, width: int, where: str) -> np.ndarray:
  """Pixel (x_min, y_min, x_max, y_max) -> (ymin, xmin, ymax, xmax) in [0, 1], clipped to the image.

  A box with no area inside the image is an error naming `where`.
  """
  x0, y0, x1, y1 = box
  xmin, xmax = np.clip([x0 / width, x1 / width], 0.0, 1.0)
  ymin, ymax = np.clip([y0 / height, y1 / height], 0.0, 1.0)
  if not (xmin < xmax and ymin < ymax):
    raise ValueError(f"{where}: box {box} (x_min, y_min, x_max, y_max in pixels) has zero area inside the "
                     f"{width}x{height} image")
  return np.array([ymin, xmin, ymax, xmax], np.float32)


def generate_examples(tree: Tree, records: Sequence[Record],
                      labels: Mapping[int, int]) -> Iterator[tuple[str, dict]]:
  """TFDS examples of `records`, keyed by filename; the images are read from `tree` in storage order."""
  by_member = {r.member: r for r in records}
  for member, data in tree.read(by_member):
    r = by_member[member]
    image, height, width = rgb_jpeg(data, tree.describe(member))
    where = f"image {r.image_id} ({tree.describe(member)})"
    yield r.filename, {"image": image, "label": labels[r.class_id],
                       "bbox": normalized_box(r.box, height, width, where),
                       "image_id": r.image_id, "filename": r.filename}
