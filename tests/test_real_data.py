"""Tests for the paired CUB-200-2011 and Stanford Cars TFDS builders, on generated and on real samples."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import scipy.io

from cqd_jax import input_pipeline
from cqd_jax.data import paired
from cqd_jax.data import registry
import fixtures_real as fx
import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


def _records(builder) -> dict[str, dict[str, dict]]:
  """Every record of every split, by split and filename."""
  return {split: {ex["filename"].decode(): ex for ex in builder.as_data_source(split)} for split in SPLITS}


def _expected_validation(images: list[fx.FixtureImage], filename) -> set[str]:
  """The documented rule: per class, the round-half-up 10% of train images first in sha256(filename) order."""
  chosen = set()
  for class_id in {i.class_id for i in images}:
    names = sorted((filename(i) for i in images if i.class_id == class_id and i.is_train),
                   key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    chosen |= set(names[:(len(names) * 10 + 50) // 100])
  return chosen


def _reencoded(path: pathlib.Path) -> np.ndarray:
  """The pixels the builders store for a grayscale, CMYK or PNG source: its RGB conversion, JPEG-coded once."""
  buf = io.BytesIO()
  Image.fromarray(fx.decoded(path)).save(buf, format="JPEG", quality=paired.JPEG_QUALITY)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _assert_not_built(builder) -> None:
  """No version directory, and no incomplete.* one either: TFDS removes it on errors."""
  assert not builder.is_prepared() and not builder.data_path.exists()
  assert not builder.data_path.parent.exists() or not list(builder.data_path.parent.iterdir())


@pytest.fixture(scope="module")
def cub_manual(tmp_path_factory) -> pathlib.Path:
  manual = tmp_path_factory.mktemp("cub_manual")
  fx.write_cub(manual)
  return manual


@pytest.fixture(scope="module")
def cars_manual(tmp_path_factory) -> pathlib.Path:
  manual = tmp_path_factory.mktemp("cars_manual")
  fx.write_cars(manual)
  return manual


@pytest.fixture(scope="module")
def cub_builder(cub_manual, tmp_path_factory):
  return registry.prepare("cub_paired", str(tmp_path_factory.mktemp("cub_data")), manual_dir=str(cub_manual))


@pytest.fixture(scope="module")
def cars_builder(cars_manual, tmp_path_factory):
  return registry.prepare("cars_paired", str(tmp_path_factory.mktemp("cars_data")), manual_dir=str(cars_manual))


def _check_build(builder, counts, names, filename, path, expected_box) -> dict[str, dict]:
  """Checks counts, names, remapped labels, boxes, RGB images (original bytes kept for RGB JPEGs, others
  converted), validation.

  Returns every record by filename.
  """
  images = fx.images(counts)
  records = _records(builder)
  assert {s: len(r) for s, r in records.items()} == fx.EXPECTED_COUNTS
  assert set(builder.info.splits) == set(registry.SPLITS[builder.name])  # What configs are checked against.
  assert input_pipeline.class_names(builder) == names
  labels = {class_id: label for label, (class_id, _, _) in enumerate(counts)}  # Present ids in id order.
  everything = {f: ex for r in records.values() for f, ex in r.items()}
  assert len(everything) == len(images)
  for image in images:
    ex = everything[filename(image)]
    assert ex["label"] == labels[image.class_id]
    np.testing.assert_allclose(ex["bbox"], expected_box(image), atol=1e-6)
    assert ex["image"].shape == (image.size[1], image.size[0], 3) and ex["image"].dtype == np.uint8
    if image.kind == "rgb":  # Stored as the original bytes, so decoded exactly as the original file.
      np.testing.assert_array_equal(ex["image"], fx.decoded(path(image)))
    else:  # Grayscale, CMYK, PNG named .jpg: converted to RGB (as PIL does) and stored as JPEG.
      np.testing.assert_array_equal(ex["image"], _reencoded(path(image)))
  np.testing.assert_allclose(everything[filename(images[0])]["bbox"], fx.KNOWN_BOX, atol=1e-6)
  assert set(records["test"]) == {filename(i) for i in images if not i.is_train}
  assert set(records["validation"]) == _expected_validation(images, filename)
  assert not set(records["validation"]) & set(records["train"])
  return everything


def _cub_box(image: fx.FixtureImage) -> np.ndarray:
  (w, h), (x, y, bw, bh) = image.size, image.box
  return np.clip([y / h, x / w, (y + bh) / h, (x + bw) / w], 0, 1)


def _cars_box(image: fx.FixtureImage) -> np.ndarray:
  (w, h), (x1, y1, x2, y2) = image.size, fx.cars_corners(image)
  return np.clip([(y1 - 1) / h, (x1 - 1) / w, y2 / h, x2 / w], 0, 1)


def test_cub_build(cub_builder, cub_manual):
  records = _check_build(cub_builder, fx.CUB_COUNTS, fx.EXPECTED_CUB_NAMES, fx.cub_filename,
                         lambda i: cub_manual / "CUB_200_2011" / "images" / fx.cub_filename(i), _cub_box)
  for i in fx.images(fx.CUB_COUNTS):
    assert records[fx.cub_filename(i)]["image_id"] == i.index + 1  # As in images.txt.


def test_cars_build(cars_builder, cars_manual):
  def filename(i):
    return f"{'cars_train' if i.is_train else 'cars_test'}/{fx.cars_filename(i)}"

  records = _check_build(cars_builder, fx.CARS_COUNTS, fx.EXPECTED_CARS_NAMES, filename,
                         lambda i: cars_manual / filename(i), _cars_box)
  for i in fx.images(fx.CARS_COUNTS):
    assert records[filename(i)]["image_id"] == filename(i).removesuffix(".jpg").encode()


@pytest.mark.parametrize("name", ["cub_paired", "cars_paired"])
def test_archives_build_the_same_records(name, cub_builder, cars_builder, tmp_path):
  """Built again from the official .tgz archives, every split holds the same records in the same order."""
  if name == "cub_paired":
    fx.to_archive(fx.write_cub(tmp_path / "manual"), "CUB_200_2011.tgz")
    built = cub_builder
  else:
    fx.write_cars(tmp_path / "manual")
    fx.cars_to_archives(tmp_path / "manual")
    built = cars_builder
  assert not any(p.is_dir() for p in (tmp_path / "manual").iterdir())
  rebuilt = registry.prepare(name, str(tmp_path / "data"), manual_dir=str(tmp_path / "manual"))
  for split in SPLITS:
    a, b = built.as_data_source(split), rebuilt.as_data_source(split)
    assert len(a) == len(b)
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_train_loader(cub_builder):
  batch = next(iter(input_pipeline.train_loader(cub_builder, "train", batch_size=4, seed=0, image_size=64)))
  assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
  assert batch["bbox"].shape == (4, 4) and set(batch["label"]) <= {0, 1, 2}


@pytest.mark.slow
def test_build_cli_is_idempotent(cub_manual, tmp_path):
  args = [sys.executable, "-m", "data_prep.build", "--dataset=cub_paired", f"--manual_dir={cub_manual}",
          f"--data_dir={tmp_path}"]
  outputs = []
  for _ in range(2):  # The second run finds the data set built.
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 11 examples" in result.stdout and "test: 4 examples" in result.stdout
    outputs.append(result.stderr)
  assert "Generating splits" in outputs[0] and "Generating" not in outputs[1]


@pytest.mark.parametrize("name, present, expected", [
    ("cub_paired", [], ["CUB_200_2011 or CUB_200_2011.tgz"]),
    ("cars_paired", ["devkit"], ["cars_train or cars_train.tgz", "cars_test or cars_test.tgz",
                                 "cars_test_annos_withlabels.mat"]),
])
def test_missing_manual_files(name, present, expected, tmp_path):
  manual = tmp_path / "manual"
  for folder in ["unrelated", *present]:
    (manual / folder).mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=f"missing in manual_dir {manual}") as e:
    registry.prepare(name, str(tmp_path / "data"), manual_dir=str(manual))
  for entry in expected:
    assert entry in str(e.value)
  assert "devkit or" not in str(e.value)
  _assert_not_built(registry.get_builder(name, str(tmp_path / "data")))


def test_absent_manual_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)does not exist or is empty.*CUB_200_2011.tgz"):
    registry.prepare("cub_paired", str(tmp_path / "data"), manual_dir=str(tmp_path / "nowhere"))


def _truncate_archive(root: pathlib.Path) -> None:
  archive = fx.to_archive(root, "CUB_200_2011.tgz")
  archive.write_bytes(archive.read_bytes()[:archive.stat().st_size * 2 // 3])


def _truncate_image(root: pathlib.Path) -> None:
  path = root / "images" / fx.cub_filename(fx.images(fx.CUB_COUNTS)[6])
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _garble_image(root: pathlib.Path) -> None:
  (root / "images" / fx.cub_filename(fx.images(fx.CUB_COUNTS)[7])).write_bytes(b"not an image")


def _remove_image(root: pathlib.Path) -> None:
  (root / "images" / fx.cub_filename(fx.images(fx.CUB_COUNTS)[8])).unlink()


def _remove_member(root: pathlib.Path) -> None:
  _remove_image(root)
  fx.to_archive(root, "CUB_200_2011.tgz")


def _edit_box(line: str):
  def edit(root: pathlib.Path) -> None:
    path = root / "bounding_boxes.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = line
    path.write_text("".join(lines))
  return edit


@pytest.mark.parametrize("corrupt, error, match", [
    (_truncate_archive, ValueError,
     r"archive .*CUB_200_2011.tgz is truncated or corrupt at member 'CUB_200_2011/images/"),
    (_truncate_image, ValueError, r"truncated or corrupt image .*Laysan_Albatross_0007_6.jpg"),
    (_garble_image, ValueError, r"truncated or corrupt image .*Laysan_Albatross_0008_7.jpg"),
    (_remove_image, FileNotFoundError, r"missing 1 file\(s\): .*/images/003.Sooty_Albatross/Sooty_Albatross_0009_8"),
    (_remove_member, FileNotFoundError, r"CUB_200_2011.tgz:CUB_200_2011/images/003.Sooty_Albatross/Sooty_Alb"),
    (_edit_box("3 2.0 1.0 wide 12.5\n"), ValueError, r"bounding_boxes.txt:3: malformed line '3 2.0 1.0 wide"),
    (_edit_box("3 2.0 1.0 18.5\n"), ValueError, r"bounding_boxes.txt:3: malformed line .*<height>'"),
    (_edit_box("3 2.0 1.0 0.0 12.5\n"), ValueError, r"image 3 \(.*_0003_2.jpg\): box .* has zero area"),
    (_edit_box("3 90.0 1.0 5.0 12.5\n"), ValueError, r"image 3 \(.*_0003_2.jpg\): box .* has zero area"),
])
def test_cub_errors_leave_no_data_set(corrupt, error, match, tmp_path):
  corrupt(fx.write_cub(tmp_path / "manual"))
  with pytest.raises(error, match=match):
    registry.prepare("cub_paired", str(tmp_path / "data"), manual_dir=str(tmp_path / "manual"))
  _assert_not_built(registry.get_builder("cub_paired", str(tmp_path / "data")))


def test_empty_validation_split(tmp_path):
  """Classes with fewer than 5 official train images give no validation images: a clear error, not TFDS's."""
  manual = tmp_path / "manual"
  split_file = fx.write_cub(manual) / "train_test_split.txt"
  lines = split_file.read_text().splitlines()
  split_file.write_text("".join(f"{line[:-1]}{int(i % 2 == 0)}\n" for i, line in enumerate(lines)))
  with pytest.raises(ValueError, match=r"no images for split\(s\) validation; validation takes 10%"):
    registry.prepare("cub_paired", str(tmp_path / "data"), manual_dir=str(manual))


def test_cars_zero_area_box(tmp_path):
  manual = tmp_path / "manual"
  fx.write_cars(manual)
  mat = manual / "cars_test_annos_withlabels.mat"
  annotations = scipy.io.loadmat(mat)["annotations"]
  annotations[0, 2]["bbox_y2"][0, 0] = annotations[0, 2]["bbox_y1"][0, 0] - 1  # Inclusive corners: no rows.
  scipy.io.savemat(mat, {"annotations": annotations})
  fname = annotations[0, 2]["fname"][0].removesuffix(".jpg")
  match = rf"image cars_test/{fname} \(.*cars_test/{fname}.jpg\): box .* has zero area"
  with pytest.raises(ValueError, match=match):
    registry.prepare("cars_paired", str(tmp_path / "data"), manual_dir=str(manual))
  _assert_not_built(registry.get_builder("cars_paired", str(tmp_path / "data")))


@pytest.mark.slow
@pytest.mark.parametrize("name, subset, split_sizes, num_classes, first_name", [
    # 750 official train images (675 + 75), 652 test.
    ("cub_paired", "cub_subset", {"train": 675, "validation": 75, "test": 652}, 25, "001.Black_footed_Albatross"),
    # 496 official train images (441 + 55), 327 test.
    ("cars_paired", "cars_subset", {"train": 441, "validation": 55, "test": 327}, 20, "AM General Hummer SUV 2000"),
])
def test_real_subsets(name, subset, split_sizes, num_classes, first_name, tmp_path):
  manual = helpers.require_shared_data(subset)
  builder = registry.prepare(name, str(tmp_path), manual_dir=str(manual))
  assert {split: input_pipeline.num_examples(builder, split) for split in SPLITS} == split_sizes
  assert input_pipeline.num_classes(builder) == num_classes
  assert input_pipeline.class_names(builder)[0] == first_name
  for split in SPLITS:  # CUB has grayscale images: all are stored as RGB.
    assert all(ex["image"].shape[2:] == (3,) for ex in builder.as_data_source(split))
  batch = next(input_pipeline.eval_batches(builder, "validation", batch_size=8, image_size=64))
  assert batch["image"].shape == (8, 64, 64, 3) and batch["mask"].all()
  bbox = batch["bbox"]
  assert (bbox[:, :2] < bbox[:, 2:]).all() and (0 <= bbox).all() and (bbox <= 1).all()
