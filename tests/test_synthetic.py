"""The procedural demo data: deterministic, balanced, with tight boxes around the object."""

import numpy as np
import pytest

from cqd_jax.data import synthetic

SPEC = synthetic.SyntheticSpec(num_classes=8, image_size=48, train_per_class=3, validation_per_class=1,
                               test_per_class=2, seed=3)


def test_same_seed_same_images_and_other_seed_differs():
  a = synthetic.make_example(SPEC, "train", 5)
  b = synthetic.make_example(SPEC, "train", 5)
  np.testing.assert_array_equal(a["image"], b["image"])
  other = synthetic.make_example(synthetic.SyntheticSpec(**{**SPEC.__dict__, "seed": 4}), "train", 5)
  assert np.abs(a["image"].astype(int) - other["image"].astype(int)).mean() > 10


def test_splits_differ_and_labels_are_balanced():
  train = synthetic.make_split(SPEC, "train")
  test = synthetic.make_split(SPEC, "test")
  assert train["image"].shape == (24, 48, 48, 3) and train["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(train["label"]), [3] * 8)
  assert not np.array_equal(train["image"][:16], test["image"])


def test_boxes_are_valid_and_contain_the_object_colour():
  data = synthetic.make_split(SPEC, "train")
  boxes = data["bbox"]
  assert np.all(boxes >= 0) and np.all(boxes <= 1)
  assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
  # The object fills much of its box, so the box interior differs from the image as a whole.
  s = SPEC.image_size
  for image, box in zip(data["image"].astype(float), boxes):
    y0, x0, y1, x1 = np.round(box * s).astype(int)
    inside = image[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    assert (y1 - y0) * (x1 - x0) < 0.5 * s * s
    assert np.abs(inside - image.reshape(-1, 3).mean(0)).max() > 3


def test_class_names_and_bad_specs():
  names = synthetic.class_names(synthetic.SyntheticSpec())
  assert len(names) == 20 and len(set(names)) == 20 and names[0] == "red-black/horizontal"
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.SyntheticSpec(num_classes=21)
  with pytest.raises(ValueError, match="test_per_class must be >= 1, got 0"):  # TFDS cannot write empty splits.
    synthetic.SyntheticSpec(test_per_class=0)
  with pytest.raises(ValueError, match="seed must be >= 0"):
    synthetic.SyntheticSpec(seed=-1)
  with pytest.raises(ValueError, match="split"):
    SPEC.num_examples("val")
  with pytest.raises(IndexError):
    synthetic.make_example(SPEC, "test", 16)
