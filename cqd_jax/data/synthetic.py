"""Procedural fine-grained "birds": the embedded demo data set, generated deterministically from a seed.

Each class is a (colour layout, detail pattern) pair. The colour layout (body, head and wing colours, head
side) is coarse and survives low resolution; the detail pattern (orientation of fine stripes on the wing) is
near the Nyquist limit of the degraded views, so low resolution, edge maps, distortion and clutter remove
some but not all of the class information, as on real fine-grained data. Objects sit at a random position
and scale on a cluttered background that contains striped and coloured distractors, and every example has
a tight bounding box, so the localisation setting (crop vs. whole image) is meaningful too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "validation", "test")

# Coarse colour layouts: (body RGB, head RGB, wing base RGB, head on the left?). Chosen pairwise similar
# (same body, different head/wing) so that colour alone is not enough for every pair.
_LAYOUTS = (
    ((0.85, 0.25, 0.20), (0.15, 0.15, 0.15), (0.95, 0.80, 0.30), True),
    ((0.85, 0.25, 0.20), (0.95, 0.95, 0.90), (0.30, 0.45, 0.85), False),
    ((0.20, 0.45, 0.85), (0.95, 0.80, 0.30), (0.95, 0.95, 0.90), True),
    ((0.20, 0.45, 0.85), (0.15, 0.15, 0.15), (0.85, 0.25, 0.20), False),
    ((0.30, 0.65, 0.30), (0.85, 0.25, 0.20), (0.15, 0.15, 0.15), True),
)
# Fine detail: stripe orientation on the wing, in degrees.
_DETAILS = (0.0, 45.0, 90.0, 135.0)
_DETAIL_NAMES = ("horizontal", "rising", "vertical", "falling")
_LAYOUT_NAMES = ("red-black", "red-white", "blue-yellow", "blue-black", "green-red")
# Per-example spread of the stripe angle (degrees) and of colours: neighbouring classes overlap a little, as
# visually close species do, so even the high-quality view has some ambiguity a teacher can express.
_DETAIL_JITTER_DEG = 12.0
_COLOUR_JITTER = 0.05


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate: sizes and counts. The same spec and seed always give the same images."""

  num_classes: int = 20
  image_size: int = 64
  train_per_class: int = 40
  validation_per_class: int = 10
  test_per_class: int = 40
  seed: int = 0

  def __post_init__(self):
    max_classes = len(_LAYOUTS) * len(_DETAILS)
    if not 2 <= self.num_classes <= max_classes:
      raise ValueError(f"synthetic num_classes must be in [2, {max_classes}], got {self.num_classes}")
    if self.image_size < 32:
      raise ValueError(f"synthetic image_size must be >= 32, got {self.image_size}")
    for field in ("train_per_class", "validation_per_class", "test_per_class"):  # TFDS refuses empty splits.
      if getattr(self, field) < 1:
        raise ValueError(f"synthetic {field} must be >= 1, got {getattr(self, field)}")
    if self.seed < 0:  # The config name (a directory) holds it as digits.
      raise ValueError(f"synthetic seed must be >= 0, got {self.seed}")

  def num_examples(self, split: str) -> int:
    """Number of examples in `split`."""
    per_class = {"train": self.train_per_class, "validation": self.validation_per_class,
                 "test": self.test_per_class}
    if split not in per_class:
      raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return per_class[split] * self.num_classes


def class_names(spec: SyntheticSpec) -> list[str]:
  """Human-readable names, e.g. 'red-black/vertical'."""
  return [f"{_LAYOUT_NAMES[c // len(_DETAILS)]}/{_DETAIL_NAMES[c % len(_DETAILS)]}"
          for c in range(spec.num_classes)]


def _rng(spec: SyntheticSpec, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([spec.seed, SPLITS.index(split), index])


def _background(rng: np.random.Generator, s: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """Smooth colour gradient plus blobs and striped distractor patches (clutter)."""
  c0, c1 = rng.uniform(0.25, 0.75, size=(2, 3))
  t = (np.cos(rng.uniform(0, np.pi)) * yy + np.sin(rng.uniform(0, np.pi)) * xx) / s
  img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
  for _ in range(rng.integers(3, 7)):
    cy, cx = rng.uniform(0, s, size=2)
    r = rng.uniform(0.05, 0.15) * s
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    colour = rng.uniform(0.1, 0.9, size=3)
    if rng.random() < 0.5:  # striped distractor with a random orientation
      theta = np.deg2rad(rng.choice(_DETAILS))
      phase = (np.cos(theta) * yy + np.sin(theta) * xx) * 2 * np.pi / rng.uniform(3.0, 5.0)
      colour = colour * (0.6 + 0.4 * (np.sin(phase) > 0))[..., None]
    img = np.where(mask[..., None], colour, img)
  return img


def make_example(spec: SyntheticSpec, split: str, index: int) -> dict[str, np.ndarray | int]:
  """Renders example `index` of `split`: uint8 image [S, S, 3], int label, box (ymin, xmin, ymax, xmax) in [0, 1]."""
  if not 0 <= index < spec.num_examples(split):
    raise IndexError(f"index {index} out of range for split {split!r} ({spec.num_examples(split)} examples)")
  rng = _rng(spec, split, index)
  label = index % spec.num_classes
  body, head, wing, head_left = (np.asarray(v) if not isinstance(v, bool) else v
                                 for v in _LAYOUTS[label // len(_DETAILS)])
  theta = np.deg2rad(_DETAILS[label % len(_DETAILS)] + rng.normal(0, _DETAIL_JITTER_DEG))
  s = spec.image_size
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
  img = _background(rng, s, yy, xx)

  # Object: an ellipse body (half-axes a x b) with a head disc and a striped wing ellipse.
  size = rng.uniform(0.32, 0.6) * s
  a, b = size / 2, size * rng.uniform(0.30, 0.38)
  cy = rng.uniform(b + 0.1 * size, s - b - 0.1 * size)
  cx = rng.uniform(a + 0.12 * size, s - a - 0.12 * size)
  jitter = lambda c: np.clip(np.asarray(c) + rng.normal(0, _COLOUR_JITTER, 3), 0, 1)
  body_m = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
  hx = cx + (-1 if head_left else 1) * a * 0.95
  hy = cy - b * 0.6
  hr = size * 0.17
  head_m = (xx - hx) ** 2 + (yy - hy) ** 2 < hr * hr
  wx, wy = cx + (1 if head_left else -1) * a * 0.15, cy + b * 0.1
  wing_m = ((xx - wx) / (a * 0.6)) ** 2 + ((yy - wy) / (b * 0.75)) ** 2 < 1
  period = size * rng.uniform(0.13, 0.16)
  phase = (np.cos(theta) * (yy - wy) + np.sin(theta) * (xx - wx)) * 2 * np.pi / period
  stripes = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
  wing_c = jitter(wing)
  contrast = np.where(wing_c.mean() > 0.5, 0.1, 0.9) * np.ones(3)  # stripes stay visible on any wing colour
  wing_img = wing_c + (contrast - wing_c) * stripes[..., None]
  img = np.where(body_m[..., None], jitter(body), img)
  img = np.where(wing_m[..., None], wing_img, img)
  img = np.where(head_m[..., None], jitter(head), img)

  obj = body_m | head_m
  ys, xs = np.nonzero(obj)
  box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32) / s
  img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.03, img.shape)  # lighting and sensor noise
  image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
  return {"image": image, "label": int(label), "bbox": box}


def make_split(spec: SyntheticSpec, split: str) -> dict[str, np.ndarray]:
  """All examples of a split stacked into arrays (for tests and quick experiments)."""
  examples = [make_example(spec, split, i) for i in range(spec.num_examples(split))]
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in ("image", "label", "bbox")}
