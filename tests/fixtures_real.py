"""Tiny CUB-200-2011 and Stanford Cars data sets in the exact official layouts, for the paired TFDS builders.

Images are small noise pictures of odd sizes; among them one grayscale JPEG, one CMYK JPEG and one PNG named
.jpg, which the builders must store as RGB JPEG. Each data set lists more class names than it has images of,
so the builders see a subset of classes.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import shutil
import tarfile

import numpy as np
from PIL import Image
import scipy.io

KINDS = ("rgb", "gray", "cmyk", "png")  # Image i (0-based) has kind KINDS[i] when i < 4, else "rgb".
# Image 0 has this size (width, height) and a box of (0.1, 0.1, 0.6, 0.6) once normalised (ymin, xmin, ...).
KNOWN_SIZE = (40, 30)
KNOWN_BOX = (0.1, 0.1, 0.6, 0.6)

CUB_NAMES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross",
             4: "004.Groove_billed_Ani", 5: "005.Crested_Auklet"}
# (class id, number of train images, number of test images): classes 1 and 4 have no images.
CUB_COUNTS = ((2, 6, 2), (3, 5, 1), (5, 2, 1))
CARS_NAMES = {1: "AM General Hummer SUV 2000", 2: "Acura RL Sedan 2012", 3: "Acura TL Sedan 2012",
              4: "Ram C/V Cargo Van Minivan 2012", 5: "Volvo XC90 SUV 2007"}
CARS_COUNTS = ((1, 5, 2), (2, 6, 1), (4, 2, 1))
# Per split: train, validation (10% of each class's train images, rounded half up) and test.
EXPECTED_COUNTS = {"train": 11, "validation": 2, "test": 4}
EXPECTED_CUB_NAMES = [CUB_NAMES[c] for c, _, _ in CUB_COUNTS]
EXPECTED_CARS_NAMES = [CARS_NAMES[c] for c, _, _ in CARS_COUNTS]


@dataclasses.dataclass(frozen=True)
class FixtureImage:
  """One generated image and its annotation; `box` is (x, y, width, height) in pixels."""

  index: int
  class_id: int
  is_train: bool
  size: tuple[int, int]  # (width, height)
  box: tuple[float, float, float, float]

  @property
  def kind(self) -> str:
    return KINDS[self.index] if self.index < len(KINDS) else "rgb"


def images(counts: tuple[tuple[int, int, int], ...]) -> list[FixtureImage]:
  """The images of a data set with `counts`, indexed from 0; image 4's box crosses the image border."""
  out = []
  for class_id, n_train, n_test in counts:
    for is_train in [True] * n_train + [False] * n_test:
      i = len(out)
      w, h = KNOWN_SIZE if i == 0 else (31 + 3 * i, 21 + 2 * i)
      box = ((4.0, 3.0, 20.0, 15.0) if i == 0 else (-1.5, 2.0, w + 5.0, h / 2) if i == 4 else
             (2.0, 1.0, w / 2, h / 2))
      out.append(FixtureImage(i, class_id, is_train, (w, h), box))
  return out


def encode(image: FixtureImage) -> bytes:
  """Noise picture of `image.size` and `image.kind` as file bytes."""
  w, h = image.size
  pixels = np.random.default_rng(image.index).integers(0, 256, (h, w, 3), np.uint8)
  picture, fmt = Image.fromarray(pixels), "JPEG"
  if image.kind == "gray":
    picture = picture.convert("L")
  elif image.kind == "cmyk":
    picture = picture.convert("CMYK")
  elif image.kind == "png":
    fmt = "PNG"
  buf = io.BytesIO()
  picture.save(buf, format=fmt)
  return buf.getvalue()


def decoded(path: pathlib.Path) -> np.ndarray:
  """The RGB pixels of an image file, as PIL decodes them."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _lines(rows) -> str:
  return "".join(" ".join(str(v) for v in row) + "\n" for row in rows)


def cub_filename(image: FixtureImage) -> str:
  """Path in images/, as in images.txt."""
  name = CUB_NAMES[image.class_id]
  return f"{name}/{name.split('.')[1]}_{image.index + 1:04d}_{image.index}.jpg"


def write_cub(manual_dir: pathlib.Path) -> pathlib.Path:
  """Writes manual_dir/CUB_200_2011/ in the official layout (image ids 1, 2, ...); returns that folder."""
  root = manual_dir / "CUB_200_2011"
  all_images = images(CUB_COUNTS)
  for image in all_images:
    path = root / "images" / cub_filename(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image))
  ids = [i.index + 1 for i in all_images]
  files = {
      "classes.txt": CUB_NAMES.items(),
      "images.txt": zip(ids, map(cub_filename, all_images)),
      "image_class_labels.txt": zip(ids, (i.class_id for i in all_images)),
      "train_test_split.txt": zip(ids, (int(i.is_train) for i in all_images)),
      "bounding_boxes.txt": ((id_, *i.box) for id_, i in zip(ids, all_images)),
  }
  for name, rows in files.items():
    (root / name).write_text(_lines(rows))
  return root


def cars_filename(image: FixtureImage) -> str:
  """File name in cars_train/ or cars_test/: numbered from 1 within each folder, as officially."""
  return f"{image.index + 1:05d}.jpg"


def _struct_array(rows: list[tuple]) -> np.ndarray:
  """`annotations` as the official devkit stores it: a 1 x N struct array of 1 x 1 matrices and a string."""
  fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
  array = np.empty((1, len(rows)), [(f, object) for f in fields])
  for i, (x1, y1, x2, y2, class_id, fname) in enumerate(rows):
    array[0, i] = (*(np.array([[v]], np.uint16) for v in (x1, y1, x2, y2)), np.array([[class_id]], np.uint8),
                   np.array([fname]))
  return array


def cars_corners(image: FixtureImage) -> tuple[int, int, int, int]:
  """Devkit box (bbox_x1, bbox_y1, bbox_x2, bbox_y2): 1-based inclusive pixel corners; may cross the border."""
  x, y, w, h = image.box
  return max(1, round(x) + 1), round(y) + 1, round(x + w), round(y + h)


def write_cars(manual_dir: pathlib.Path) -> None:
  """Writes cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat into manual_dir."""
  all_images = images(CARS_COUNTS)
  rows = {True: [], False: []}
  for image in all_images:
    folder = manual_dir / ("cars_train" if image.is_train else "cars_test")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / cars_filename(image)).write_bytes(encode(image))
    rows[image.is_train].append((*cars_corners(image), image.class_id, cars_filename(image)))
  (manual_dir / "devkit").mkdir()
  names = np.empty((1, len(CARS_NAMES)), object)
  names[0, :] = [np.array([n]) for n in CARS_NAMES.values()]
  scipy.io.savemat(manual_dir / "devkit" / "cars_meta.mat", {"class_names": names})
  scipy.io.savemat(manual_dir / "devkit" / "cars_train_annos.mat", {"annotations": _struct_array(rows[True])})
  scipy.io.savemat(manual_dir / "cars_test_annos_withlabels.mat", {"annotations": _struct_array(rows[False])})


def to_archive(folder: pathlib.Path, archive_name: str) -> pathlib.Path:
  """Replaces `folder` by `archive_name` (.tgz) beside it, whose members are under `folder.name`/."""
  archive = folder.parent / archive_name
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  shutil.rmtree(folder)
  return archive


def cars_to_archives(manual_dir: pathlib.Path) -> None:
  """Replaces the three Cars folders by the official archives."""
  for folder, archive in (("cars_train", "cars_train.tgz"), ("cars_test", "cars_test.tgz"),
                          ("devkit", "car_devkit.tgz")):
    to_archive(manual_dir / folder, archive)
