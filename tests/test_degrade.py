"""Tests for cqd_jax.degrade: shapes, ranges, determinism, identities, make_view, and the resampling views
against PIL's antialiased resize (an independent implementation; torch is not needed)."""

import os
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from cqd_jax import degrade

XLA_OPTIMIZED = True  # values are compared with PIL's
SIZE = 32
DETERMINISTIC_OPS = tuple(sorted(set(degrade.OPS) - degrade.RANDOM_OPS))


@functools.lru_cache(maxsize=None)
def _jitted_op(name, size, params):
  """One jitted OPS[name] per (size, params), so tests share compilations."""
  return jax.jit(functools.partial(degrade.OPS[name], size=size, **dict(params)))


def _apply(name, images, boxes=None, key=None, *, size=SIZE, **params):
  """OPS[name] under jit, compiled once per (op, size, params, input shapes)."""
  boxes = _boxes(len(images)) if boxes is None else boxes
  key = jax.random.key(0) if key is None else key
  return _jitted_op(name, size, tuple(sorted(params.items())))(images, boxes, key)


def _random_images(h=40, w=48):
  return jnp.asarray(np.random.default_rng(0).random((2, h, w, 3)), jnp.float32)


def _boxes(n=2):
  return jnp.asarray([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]][:n], jnp.float32)


def _vertical_step(col=16, left=0.2, right=0.8):
  """[1, SIZE, SIZE, 3] image that is `left` before column `col`, `right` from it."""
  image = np.full((1, SIZE, SIZE, 3), left, np.float32)
  image[:, :, col:] = right
  return jnp.asarray(image)


def _smooth_pattern():
  """[1, SIZE, SIZE, 3] smooth colourful image, so warps change it measurably."""
  r, c = np.indices((SIZE, SIZE))
  channels = [0.5 + 0.4 * np.sin(r / 3.0), 0.5 + 0.4 * np.cos(c / 2.5),
              0.5 + 0.4 * np.sin((r + c) / 4.0)]
  return jnp.asarray(np.stack(channels, -1)[None], jnp.float32)


# ----------------------------------------------------------------------------
# Every op.


@pytest.mark.parametrize("name", sorted(degrade.OPS))
def test_op_shape_dtype_and_range(name):
  images, boxes = _random_images(), _boxes()
  out, out_boxes = _apply(name, images, boxes)
  assert out.shape == (2, SIZE, SIZE, 3)
  assert out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert out_boxes.shape == (2, 4)
  expected_boxes = np.tile([0.0, 0.0, 1.0, 1.0], (2, 1)) if name == "crop" else boxes
  np.testing.assert_allclose(out_boxes, expected_boxes)


@pytest.mark.parametrize("name", sorted(degrade.OPS))
def test_op_stays_in_unit_range_on_hard_edges(name):
  """Black/white blocks make cubic resampling overshoot; outputs must still be in [0, 1]."""
  blocks = (np.indices((40, 48)) // 5).sum(0) % 2
  images = jnp.asarray(np.repeat(blocks[None, ..., None], 3, -1), jnp.float32)
  out, _ = _apply(name, jnp.concatenate([images, 1.0 - images]))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(degrade.OPS))
def test_op_jit_matches_eager(name):
  images, boxes, key = _random_images(), _boxes(), jax.random.key(3)
  eager, eager_boxes = degrade.OPS[name](images, boxes, key, size=SIZE)
  jitted, jitted_boxes = _apply(name, images, boxes, key)
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  np.testing.assert_allclose(jitted_boxes, eager_boxes, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC_OPS)
def test_batch_equals_per_example(name):
  images, boxes = _random_images(), _boxes()
  batch, batch_boxes = _apply(name, images, boxes)
  for i in range(len(images)):
    single, single_boxes = _apply(name, images[i:i + 1], boxes[i:i + 1])
    np.testing.assert_allclose(batch[i], single[0], atol=1e-5)
    np.testing.assert_allclose(batch_boxes[i], single_boxes[0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(degrade.OPS))
def test_random_ops_are_exactly_those_that_depend_on_the_key(name):
  """degrade.RANDOM_OPS (what cached teacher logits rely on) matches what each op does with its key."""
  images = _random_images()
  outputs = [np.asarray(_apply(name, images, key=jax.random.key(seed))[0]) for seed in (0, 1)]
  assert (not np.array_equal(*outputs)) == (name in degrade.RANDOM_OPS)
  assert degrade.is_random(f"crop+{name}") == (name in degrade.RANDOM_OPS)


def test_raw_and_typed_keys_give_the_same_result():
  images, boxes = _smooth_pattern(), _boxes(n=1)
  typed, _ = _apply("distort", images, boxes, jax.random.key(5))
  raw, _ = _apply("distort", images, boxes, jax.random.PRNGKey(5))
  np.testing.assert_allclose(typed, raw, atol=1e-6)


# ----------------------------------------------------------------------------
# full / identity / grayscale.


def test_identity_keeps_images_of_the_right_size():
  images = _random_images(h=SIZE, w=SIZE)
  out, _ = _apply("identity", images)
  np.testing.assert_array_equal(out, images)


def test_identity_resizes_like_full_otherwise():
  images = _random_images()
  np.testing.assert_allclose(
      _apply("identity", images)[0], _apply("full", images)[0], atol=1e-6)


def test_full_of_a_constant_image_is_that_constant():
  out, _ = _apply("full", jnp.full((1, 40, 48, 3), 0.3, jnp.float32))
  np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_grayscale_uses_luminance_on_all_channels():
  images = jnp.zeros((1, SIZE, SIZE, 3)).at[..., 0].set(1.0)  # Pure red.
  out, _ = _apply("grayscale", images)
  np.testing.assert_allclose(out, 0.299, atol=1e-6)
  # Every weight, on random colours: ITU-R BT.601 luma, the same value on all three channels.
  images = _random_images(h=SIZE, w=SIZE)
  out = np.asarray(_apply("grayscale", images)[0])
  luma = np.asarray(images) @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, -1), atol=1e-6)


# ----------------------------------------------------------------------------
# Resampling against PIL (mode "F": float32 pixels, antialiased filters scaled by the resize factor).


def _pil_resize(images: np.ndarray, size: int, method, boxes=None) -> np.ndarray:
  """Each [H, W] channel of each image resized by PIL to size x size (`boxes`: the region, normalised)."""
  out = []
  for i, image in enumerate(np.asarray(images, np.float32)):
    h, w = image.shape[:2]
    box = None if boxes is None else (boxes[i][1] * w, boxes[i][0] * h, boxes[i][3] * w, boxes[i][2] * h)
    out.append(np.stack([np.asarray(Image.fromarray(image[..., c], mode="F").resize((size, size), method, box=box))
                         for c in range(image.shape[-1])], -1))
  return np.clip(np.stack(out), 0.0, 1.0)


def test_full_is_pils_antialiased_bilinear_resize():
  images = _random_images()  # 40 x 48 -> 32 x 32
  np.testing.assert_allclose(_apply("full", images)[0], _pil_resize(images, SIZE, Image.BILINEAR), atol=1e-5)


def test_crop_is_pils_bilinear_resize_of_the_box():
  images, boxes = _random_images(), np.asarray(_boxes())
  np.testing.assert_allclose(_apply("crop", images, jnp.asarray(boxes))[0],
                             _pil_resize(images, SIZE, Image.BILINEAR, boxes), atol=1e-5)


@pytest.mark.parametrize("h,w", [(SIZE, SIZE), (40, 48)])
def test_lowres_is_pils_antialiased_bicubic_down_and_up(h, w):
  """224 -> 50 -> 224 in the paper; here 32 (or 40 x 48) -> 8 -> 32. A bilinear or a non-antialiased cubic
  resize differs from PIL's by more than 1e-2 here."""
  images = _random_images(h=h, w=w)
  expected = _pil_resize(_pil_resize(images, 8, Image.BICUBIC), SIZE, Image.BICUBIC)
  np.testing.assert_allclose(_apply("lowres", images, low=8)[0], expected, atol=1e-5)


# ----------------------------------------------------------------------------
# crop.


def test_crop_of_the_whole_image_matches_full():
  images = _random_images()
  boxes = jnp.tile(jnp.array([[0.0, 0.0, 1.0, 1.0]]), (2, 1))
  np.testing.assert_allclose(
      _apply("crop", images, boxes)[0], _apply("full", images, boxes)[0], atol=1e-5)


def test_crop_recovers_the_coloured_square_in_each_box():
  """Each example's box sits 1 px inside a coloured square; the crop is all that colour."""
  images = np.array(_random_images())  # [2, 40, 48, 3].
  colours = [(0.9, 0.2, 0.4), (0.1, 0.7, 0.3)]
  squares = [(10, 20, 30, 40), (22, 4, 38, 14)]  # Box (row0, col0, row1, col1) in px.
  for i, ((r0, c0, r1, c1), colour) in enumerate(zip(squares, colours)):
    images[i, r0 - 1:r1 + 1, c0 - 1:c1 + 1] = colour
  boxes = jnp.asarray([[r0 / 40, c0 / 48, r1 / 40, c1 / 48]
                       for r0, c0, r1, c1 in squares], jnp.float32)
  out, _ = _apply("crop", jnp.asarray(images), boxes)
  for i, colour in enumerate(colours):
    np.testing.assert_allclose(out[i], np.broadcast_to(colour, (SIZE, SIZE, 3)), atol=1e-5)


def test_crop_zooms_into_the_box():
  """A box over the left of a step image (step at column 24 of 48) sees only the left value."""
  images = np.full((1, 40, 48, 3), 0.2, np.float32)
  images[:, :, 24:] = 0.8
  out, _ = _apply("crop", jnp.asarray(images), jnp.array([[0.0, 0.0, 1.0, 0.45]]))
  np.testing.assert_allclose(out, 0.2, atol=1e-5)


@pytest.mark.parametrize("box", [
    (0.5, 0.5, 0.5, 0.5),    # Zero size.
    (0.7, 0.6, 0.2, 0.1),    # Inverted.
    (1.0, 1.0, 1.0, 1.0),    # Zero size on the far corner.
    (-0.5, -0.2, 1.7, 2.0),  # Beyond the image.
])
def test_crop_degenerate_boxes_still_sample_the_image(box):
  """Boxes are clipped to the image and kept at least a pixel wide: no NaN, no black."""
  colour = np.array([0.3, 0.6, 0.9], np.float32)
  images = jnp.asarray(np.broadcast_to(colour, (1, 40, 48, 3)))
  out, _ = _apply("crop", images, jnp.array([box], jnp.float32))
  np.testing.assert_allclose(out, np.broadcast_to(colour, out.shape), atol=1e-5)


# ----------------------------------------------------------------------------
# lowres.


def test_lowres_with_low_equal_to_size_is_identity():
  images = _random_images(h=SIZE, w=SIZE)
  out, _ = _apply("lowres", images, low=SIZE)
  np.testing.assert_allclose(out, images, atol=1e-5)


def test_lowres_removes_fine_detail():
  checker = (np.indices((SIZE, SIZE)).sum(0) % 2).astype(np.float32)
  images = jnp.asarray(np.repeat(checker[None, ..., None], 3, -1))
  out, _ = _apply("lowres", images, low=8)
  assert float(out.std()) < 0.05 < float(images.std())
  np.testing.assert_allclose(float(out.mean()), 0.5, atol=0.02)


def test_lowres_default_low_follows_the_paper_ratio():
  images, boxes, key = _random_images(), _boxes(), jax.random.key(0)
  lowres = functools.partial(degrade.lowres, images, boxes, key, size=64)
  default, with_14, with_16 = lowres()[0], lowres(low=14)[0], lowres(low=16)[0]
  np.testing.assert_allclose(default, with_14, atol=1e-6)  # round(64 * 50 / 224) = 14.
  assert float(jnp.abs(default - with_16).max()) > 1e-2


# ----------------------------------------------------------------------------
# edges.


def _edge_map(images, **params):
  out = np.asarray(_apply("edges", images, **params)[0])
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert set(np.unique(out)) <= {0.0, 1.0}
  return out[..., 0]


@pytest.mark.parametrize("left,right", [(0.2, 0.8), (0.9, 0.1)])
@pytest.mark.parametrize("transpose", [False, True])
def test_edges_of_a_step_lie_on_the_step(left, right, transpose):
  """A vertical (or, transposed, horizontal) step between columns 15 and 16."""
  image = _vertical_step(col=16, left=left, right=right)
  edge = _edge_map(image.transpose(0, 2, 1, 3) if transpose else image)[0]
  edge = edge.T if transpose else edge
  rows, cols = np.nonzero(edge)
  assert set(cols) <= {15, 16}  # The two columns either side of the step.
  assert set(rows) == set(range(SIZE))  # An unbroken line, top to bottom.
  assert (edge.sum(axis=1) == 1).all()  # One pixel thin.


@pytest.mark.parametrize("anti", [False, True])
def test_edges_of_a_diagonal_step_are_thin_and_on_the_diagonal(anti):
  r, c = np.indices((SIZE, SIZE))
  c = SIZE - 1 - c if anti else c  # Mirror for the anti-diagonal.
  image = jnp.asarray(np.repeat((c > r)[None, ..., None], 3, -1), jnp.float32)
  edge = _edge_map(image)[0]
  edge = edge[:, ::-1] if anti else edge
  rows, cols = np.nonzero(edge)
  assert len(rows) >= SIZE - 2
  assert (np.abs(cols - rows) <= 1).all()
  assert edge.sum(axis=1).max() <= 2


def test_edges_of_a_flat_image_are_empty():
  assert _edge_map(jnp.full((1, SIZE, SIZE, 3), 0.4, jnp.float32)).sum() == 0


def test_hysteresis_grows_strong_edges_along_connected_weak_ones_only():
  mag = np.zeros((1, 16, 16), np.float32)
  mag[0, 2, 5] = 1.0          # The only strong pixel.
  mag[0, 3:12, 5] = 0.15      # Weak chain touching it.
  mag[0, 3:12, 10] = 0.15     # Weak chain on its own.
  mag[0, 12, 5] = 0.05        # Below `low`: ends the chain.

  def grown(iterations):
    edge = degrade._hysteresis(jnp.asarray(mag), 0.1, 0.2, iterations)
    return np.argwhere(np.asarray(edge)[0]).tolist()

  assert grown(0) == [[2, 5]]
  assert grown(4) == [[r, 5] for r in range(2, 7)]
  assert grown(30) == [[r, 5] for r in range(2, 12)]


def test_edges_thresholds_are_relative_to_the_strongest_edge():
  """Steps of contrast 0.6 and 0.1: only the strong one survives high = 0.5, both at 0.1."""
  image = np.full((1, SIZE, SIZE, 3), 0.2, np.float32)
  image[:, :, 8:] = 0.8
  image[:, :, 24:] = 0.9
  strict = _edge_map(jnp.asarray(image), low=0.5, high=0.5)[0]
  loose = _edge_map(jnp.asarray(image), low=0.1, high=0.1)[0]
  assert set(np.nonzero(strict)[1]) <= {7, 8}
  assert set(np.nonzero(loose)[1]) <= {7, 8, 23, 24} and loose[:, 22:26].sum() == SIZE


# ----------------------------------------------------------------------------
# distort.


def test_distort_is_deterministic_per_key_and_differs_across_keys():
  images = _smooth_pattern()
  a, _ = _apply("distort", images, key=jax.random.key(1))
  b, _ = _apply("distort", images, key=jax.random.key(1))
  c, _ = _apply("distort", images, key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-2


def test_distort_examples_in_a_batch_differ():
  images = jnp.concatenate([_smooth_pattern()] * 2)
  out, _ = _apply("distort", images, variance=64.0)
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-2


def test_distort_with_zero_variance_is_identity():
  images = _random_images(h=SIZE, w=SIZE)
  out, _ = _apply("distort", images, variance=0.0)
  np.testing.assert_allclose(out, images, atol=1e-5)


def test_distort_moves_the_control_points_by_the_configured_variance():
  """The control points move by N(0, variance) px at 224 px, i.e. a standard deviation of sqrt(variance) *
  size / 224 px: read off an image that encodes each pixel's (row, col) in two channels, which bilinear
  sampling returns exactly at the point it samples. With size 29 and an 8 x 8 grid the controls fall on
  pixels 0, 4, ..., 28; the interior ones (clamping bends the border) give 64 x 36 x 2 shifts."""
  size, grid, variance = 29, 8, 49.0  # std 0.94 px
  rows, cols = np.indices((size, size), np.float32) / (size - 1)
  image = np.stack([rows, cols, np.zeros_like(rows)], -1)
  images = jnp.asarray(np.broadcast_to(image, (64, size, size, 3)))
  out = np.asarray(_apply("distort", images, _boxes(2)[:1].repeat(64, 0), jax.random.key(4), size=size,
                          grid=grid, variance=variance)[0])
  controls = np.arange(4, size - 4, 4)  # interior control pixels
  moved = out[:, controls][:, :, controls, :2] * (size - 1)  # the (row, col) each control pixel sampled
  shifts = moved - np.stack(np.meshgrid(controls, controls, indexing="ij"), -1)[None]
  expected_std = np.sqrt(variance) * size / 224
  assert abs(shifts.mean()) < 0.05 * expected_std
  np.testing.assert_allclose(shifts.std(), expected_std, rtol=0.05)  # 4608 draws: about 1% sampling error


def test_distort_changes_the_image_more_with_larger_variance():
  images, boxes, key = _smooth_pattern(), _boxes(n=1), jax.random.key(0)
  change = [float(jnp.abs(degrade.distort(images, boxes, key, size=SIZE, variance=v)[0]
                          - images).mean())
            for v in (4.0, 64.0, 400.0)]
  assert 0 < change[0] < change[1] < change[2]


def test_tps_matrix_interpolates_the_control_shifts():
  grid, size = 4, 31  # Control points fall on pixels 0, 10, 20, 30.
  matrix = degrade._tps_matrix(grid, size).reshape(size, size, grid * grid)
  np.testing.assert_allclose(
      matrix[::10, ::10].reshape(grid * grid, grid * grid), np.eye(grid * grid), atol=1e-5)


def test_tps_matrix_reproduces_affine_shifts_everywhere():
  """Uniform and linear control shifts give exactly that field, not just at the controls."""
  grid, size = 5, SIZE
  matrix = degrade._tps_matrix(grid, size)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
  control_rows = np.repeat(np.linspace(0, size - 1, grid), grid)
  pixel_rows = np.repeat(np.arange(size, dtype=np.float64), size)
  np.testing.assert_allclose(matrix @ control_rows, pixel_rows, atol=1e-3)


# ----------------------------------------------------------------------------
# make_view.


def test_make_view_composes_ops_with_folded_keys():
  images, boxes, key = _random_images(), _boxes(), jax.random.key(7)
  view = degrade.make_view("crop+distort", SIZE, {"distort": {"variance": 16.0}})
  out, out_boxes = jax.jit(view)(images, boxes, key)
  cropped, cropped_boxes = _apply("crop", images, boxes, jax.random.fold_in(key, 0))
  expected, _ = _apply("distort", cropped, cropped_boxes, jax.random.fold_in(key, 1),
                       variance=16.0)
  assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, atol=1e-5)
  np.testing.assert_allclose(out_boxes, np.tile([0.0, 0.0, 1.0, 1.0], (2, 1)))


@pytest.mark.parametrize("spec", ["crop+lowres", "full+edges", "crop + grayscale + lowres",
                                  "identity+distort+lowres"])
def test_make_view_output_shape_and_range(spec):
  out, boxes = degrade.make_view(spec, SIZE)(_random_images(), _boxes(), jax.random.key(0))
  assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == jnp.float32
  assert boxes.shape == (2, 4)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_make_view_passes_params_to_their_op():
  images, boxes, key = _random_images(h=SIZE, w=SIZE), _boxes(), jax.random.key(0)
  sharp, _ = degrade.make_view("lowres", SIZE, {"lowres": {"low": SIZE}})(images, boxes, key)
  blurry, _ = degrade.make_view("lowres", SIZE)(images, boxes, key)
  np.testing.assert_allclose(sharp, images, atol=1e-5)
  assert float(jnp.abs(blurry - images).mean()) > 0.1


def test_make_view_accepts_config_dict_params_and_unused_known_ops():
  params = ml_collections.ConfigDict({"lowres": {"low": SIZE}, "distort": {"grid": 4}})
  images = _random_images(h=SIZE, w=SIZE)
  out, _ = degrade.make_view("lowres", SIZE, params)(images, _boxes(), jax.random.key(0))
  np.testing.assert_allclose(out, images, atol=1e-5)


def test_make_view_rejects_unknown_op():
  with pytest.raises(ValueError, match=r"'blur'.*known ops: crop, distort, edges"):
    degrade.make_view("crop+blur", SIZE)


def test_make_view_rejects_unknown_op_in_params():
  with pytest.raises(ValueError, match="'lowers'"):
    degrade.make_view("lowres", SIZE, {"lowers": {"low": 8}})


def test_make_view_rejects_unknown_param():
  with pytest.raises(ValueError, match=r"'lowres\.lo' is not known; lowres takes: low$"):
    degrade.make_view("crop+lowres", SIZE, {"lowres": {"lo": 8}})
  with pytest.raises(ValueError, match=r"'crop\.low' is not known; crop takes: no params"):
    degrade.make_view("crop", SIZE, {"crop": {"low": 8}})


@pytest.mark.parametrize("spec", ["", "  ", "crop++lowres", "crop+"])
def test_make_view_rejects_empty_specs(spec):
  with pytest.raises(ValueError, match="empty"):
    degrade.make_view(spec, SIZE)


def test_view_figure_labels_every_row_and_column():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from cqd_jax import visualize  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(helpers.REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("lowres,localize")
  batch = helpers.tiny_batch(3, size=64, num_classes=2)
  fig = visualize.view_figure(config, batch, ["class x", "class y"])
  axes = fig.axes
  assert len(axes) == 9 and fig._suptitle.get_text()  # pylint: disable=protected-access
  assert [a.get_title() for a in axes[:3]] == [["class x", "class y"][int(l)] for l in batch["label"]]
  labels = [axes[3 * r].get_ylabel() for r in range(3)]
  assert labels == ["A: crop", "B of localize:\nfull", "B of lowres:\ncrop+lowres"]
