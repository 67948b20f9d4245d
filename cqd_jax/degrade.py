"""Image degradations: turn a stored image into a high- or low-quality view.

Cross Quality Distillation trains a teacher on one view of an image (domain A,
e.g. a crop of the object's box) and a student on a degraded view of the same
image (domain B, e.g. that crop at low resolution). Views are built here from
small pure ops, registered by name in `OPS`, all with one signature:

  op(images, boxes, key, *, size, **params) -> (images, boxes)

- images: float32 [N, H, W, C] in [0, 1]. Any H x W goes in; [N, size, size, C]
  comes out, still in [0, 1].
- boxes: float32 [N, 4] as (ymin, xmin, ymax, xmax), normalised to [0, 1] of
  the image. Ops return the boxes in their output image's frame.
- key: a JAX PRNG key (`jax.random.key` or `jax.random.PRNGKey`). Random ops
  split it into one key per example, so outputs are a function of the key.

`size` and the params are static Python values: bind them (e.g. with
`functools.partial`) and the op is pure and jit-able. `make_view("crop+lowres",
size, params)` composes ops left to right into one jit-able
`(images, boxes, key, variables=None) -> (images, boxes)` function; the first op
sees the raw stored image and every op outputs size x size.

Ops registered in `NETWORK_OPS` instead take one more keyword, `variables`: a
trained network's, passed in at call time (`view(..., variables={"sr": ...})`)
so that they are arguments of a compiled step, not constants baked into it;
`needs_variables(spec)` names the networks a view reads.

Ops: full, identity, crop, lowres, lowres_sr (lowres, then the SRCNN of the
'sr' network: the paper's appendix A), edges (1 = edge on a 0 background),
distort (thin-plate-spline warp), grayscale.
"""

from collections.abc import Callable, Mapping
import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cqd_jax.models import srcnn

Op = Callable[..., tuple[jax.Array, jax.Array]]
# (images, boxes, key, variables=None) -> (images, boxes); `variables` maps network names to their variables.
View = Callable[..., tuple[jax.Array, jax.Array]]

_HIGHEST = jax.lax.Precision.HIGHEST
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's "L" mode.
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
# Gradient magnitudes below this (far under one 8-bit grey level) are never
# edges, so flat images give empty edge maps instead of amplified float noise.
_MIN_EDGE_MAGNITUDE = 1e-3
# Neighbour offset (drow, dcol) along the gradient for each quantised gradient
# direction: 0 deg (horizontal), 45, 90 (vertical), 135; rows grow downwards.
_NMS_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))
_PAPER_SIZE = 224  # The paper's input size; `lowres` and `distort` defaults scale from it.


# ----------------------------------------------------------------------------
# Shared helpers.


def _resize(images: jax.Array, size: int, method: str = "linear") -> jax.Array:
  """Antialiased resize of [N, H, W, C] to [N, size, size, C], clipped to [0, 1]."""
  n, _, _, c = images.shape
  out = jax.image.resize(
      images.astype(jnp.float32), (n, size, size, c), method, antialias=True)
  return jnp.clip(out, 0.0, 1.0)


def _luminance(images: jax.Array) -> jax.Array:
  """[N, H, W, 3] RGB -> [N, H, W] luma; a single channel passes through."""
  if images.shape[-1] == 1:
    return images[..., 0]
  return jnp.einsum(
      "nhwc,c->nhw", images, jnp.asarray(_LUMA, jnp.float32), precision=_HIGHEST)


def _to_rgb(gray: jax.Array) -> jax.Array:
  """[N, H, W] -> [N, H, W, 3] by replicating the single channel."""
  return jnp.repeat(gray[..., None], 3, axis=-1)


# ----------------------------------------------------------------------------
# Geometric ops: full, identity, crop.


def full(images: jax.Array, boxes: jax.Array, key: jax.Array, *,
         size: int) -> tuple[jax.Array, jax.Array]:
  """Resizes the whole image to size x size (bilinear, antialiased)."""
  del key
  return _resize(images, size), boxes


def identity(images: jax.Array, boxes: jax.Array, key: jax.Array, *,
             size: int) -> tuple[jax.Array, jax.Array]:
  """Passes images through; resizes like `full` only if not already size x size."""
  if images.shape[1:3] == (size, size):
    return images.astype(jnp.float32), boxes
  return full(images, boxes, key, size=size)


def _crop_one(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Resamples one [H, W, C] image so that `box`, clipped to it, fills size x size."""
  h, w, c = image.shape
  extent = jnp.array([h, w], jnp.float32)
  start = jnp.minimum(jnp.clip(box[:2], 0.0, 1.0) * extent, extent - 1.0)
  end = jnp.clip(box[2:], 0.0, 1.0) * extent
  span = jnp.maximum(end - start, 1.0)  # At least one pixel: no zero division.
  scale = size / span
  return jax.image.scale_and_translate(
      image, (size, size, c), (0, 1), scale, -start * scale, "linear",
      antialias=True)


def crop(images: jax.Array, boxes: jax.Array, key: jax.Array, *,
         size: int) -> tuple[jax.Array, jax.Array]:
  """Crops each example's box to size x size (bilinear, antialiased): the "localised" view."""
  del key
  crop_one = functools.partial(_crop_one, size=size)
  out = jax.vmap(crop_one)(images.astype(jnp.float32), boxes.astype(jnp.float32))
  whole = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32), boxes.shape)
  return jnp.clip(out, 0.0, 1.0), whole


# ----------------------------------------------------------------------------
# Photometric ops: lowres, grayscale, edges.


def lowres(images: jax.Array, boxes: jax.Array, key: jax.Array, *, size: int,
           low: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Bicubic down to low x low and back up to size x size (paper: 224 -> 50 -> 224).

  `low` defaults to round(size * 50 / 224), the paper's ratio.
  """
  del key
  low = low_size(size, low)
  return _resize(_resize(images, low, "cubic"), size, "cubic"), boxes


def low_size(size: int, low: int | None = None) -> int:
  """The low resolution `lowres` uses at `size`: `low`, else the paper's ratio round(size * 50 / 224)."""
  return low or max(1, round(size * 50 / _PAPER_SIZE))


def lowres_sr(images: jax.Array, boxes: jax.Array, key: jax.Array, *, size: int,
              low: int | None = None,
              variables: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """`lowres`, then the SRCNN in `variables` (trained by `cqd_jax.sr.train`) refines its bicubic upsampling."""
  images, boxes = lowres(images, boxes, key, size=size, low=low)
  return srcnn.enhance(variables, images), boxes


def grayscale(images: jax.Array, boxes: jax.Array, key: jax.Array, *,
              size: int) -> tuple[jax.Array, jax.Array]:
  """Resizes to size x size and replaces colour by its luminance on 3 channels."""
  del key
  return _to_rgb(_luminance(_resize(images, size))), boxes


def _filter(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Correlates [N, H, W] with a 2-D kernel, same size, edge pixels replicated."""
  kh, kw = kernel.shape
  x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge")
  out = jax.lax.conv_general_dilated(
      x[..., None], jnp.asarray(kernel, jnp.float32)[:, :, None, None],
      window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
  return out[..., 0]


def _gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of [N, H, W] (radius 3 sigma); sigma <= 0 is a no-op."""
  if sigma <= 0:
    return x
  radius = math.ceil(3 * sigma)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  return _filter(_filter(x, taps[:, None]), taps[None, :])


def _shift(x: jax.Array, drow: int, dcol: int) -> jax.Array:
  """out[:, r, c] = x[:, r + drow, c + dcol] for [N, H, W], zero off the image."""
  h, w = x.shape[1:]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
  return padded[:, 1 + drow:1 + drow + h, 1 + dcol:1 + dcol + w]


def _non_max_suppression(mag: jax.Array, grad_row: jax.Array,
                         grad_col: jax.Array) -> jax.Array:
  """Zeroes magnitudes that are not a peak along the gradient (quantised to 4 directions).

  Ties count as a peak on one side only, so symmetric steps stay one pixel thin.
  """
  angle = jnp.rad2deg(jnp.arctan2(grad_row, grad_col)) % 180.0
  direction = jnp.round(angle / 45.0).astype(jnp.int32)[..., None] % 4

  def along_gradient(sign):
    shifted = [_shift(mag, sign * dr, sign * dc) for dr, dc in _NMS_OFFSETS]
    return jnp.take_along_axis(jnp.stack(shifted, -1), direction, -1)[..., 0]

  is_peak = (mag > along_gradient(1)) & (mag >= along_gradient(-1))
  return jnp.where(is_peak, mag, 0.0)


def _hysteresis(mag: jax.Array, low: float, high: float,
                iterations: int) -> jax.Array:
  """Grows strong edges into connected weak ones by `iterations` 3x3 dilations.

  Thresholds are fractions of each image's peak magnitude; returns 0/1 floats.
  """
  peak = jnp.max(mag, axis=(1, 2), keepdims=True)
  weak = (mag > low * peak) & (mag > _MIN_EDGE_MAGNITUDE)
  strong = weak & (mag >= high * peak)

  def dilate_into_weak(_, edge):
    grown = jax.lax.reduce_window(
        edge, 0.0, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    return jnp.where(weak, grown, 0.0)

  return jax.lax.fori_loop(
      0, iterations, dilate_into_weak, strong.astype(jnp.float32))


def edges(images: jax.Array, boxes: jax.Array, key: jax.Array, *, size: int,
          sigma: float = 1.4, low: float = 0.1, high: float = 0.2,
          iterations: int = 16) -> tuple[jax.Array, jax.Array]:
  """Canny-style edge map at size x size: 1 = edge, 0 = background, on 3 channels.

  Luminance, Gaussian blur (sigma px), Sobel, 4-direction non-maximum
  suppression, then hysteresis with `low`/`high` relative to the peak gradient.
  """
  del key
  lum = _gaussian_blur(_luminance(_resize(images, size)), sigma)
  grad_row, grad_col = _filter(lum, _SOBEL_X.T), _filter(lum, _SOBEL_X)
  thin = _non_max_suppression(jnp.hypot(grad_row, grad_col), grad_row, grad_col)
  return _to_rgb(_hysteresis(thin, low, high, iterations)), boxes


# ----------------------------------------------------------------------------
# Thin-plate-spline distortion.


def _square_grid(n: int) -> np.ndarray:
  """[n * n, 2] (row, col) points uniformly covering [-1, 1]^2, row-major."""
  rows, cols = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
  return np.stack([rows.ravel(), cols.ravel()], axis=-1)


def _tps_basis(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
  """[P, K + 3] rows [U(|p - c_k|) for k, 1, row, col], with U = r^2 log r^2."""
  d2 = ((points[:, None, 0] - centres[None, :, 0]) ** 2
        + (points[:, None, 1] - centres[None, :, 1]) ** 2)
  radial = d2 * np.log(np.where(d2 > 0, d2, 1.0))  # U(0) = 0.
  return np.concatenate([radial, np.ones_like(points[:, :1]), points], axis=1)


@functools.lru_cache(maxsize=4)
def _tps_matrix(grid: int, size: int) -> np.ndarray:
  """[size * size, grid^2] linear map from control-point shifts to the dense TPS field.

  Control points lie on a uniform grid over the pixel centres. The map depends
  only on (grid, size), so it is solved once, on the host in float64: the TPS
  system is too ill-conditioned for float32 to be reproducible to 1e-5 px.
  Under jit it is a constant (39 MB at size 224, grid 14).
  """
  k = grid * grid
  control = _square_grid(grid)
  top = _tps_basis(control, control)
  system = np.concatenate([top, np.pad(top[:, k:].T, ((0, 0), (0, 3)))])  # [[K, P], [P^T, 0]].
  coeffs_per_shift = np.linalg.solve(system, np.eye(k + 3)[:, :k])
  return (_tps_basis(_square_grid(size), control) @ coeffs_per_shift).astype(np.float32)


def _sample_bilinear(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Samples [H, W, C] at [2, H', W'] (row, col) pixel coords, clamped at the edges."""
  def sample(channel):
    return jax.scipy.ndimage.map_coordinates(
        channel, list(coords), order=1, mode="nearest")
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def distort(images: jax.Array, boxes: jax.Array, key: jax.Array, *, size: int,
            grid: int = 14,
            variance: float = 4.0) -> tuple[jax.Array, jax.Array]:
  """Random thin-plate-spline warp of the size x size image (the paper's "distortion").

  Each of the grid x grid control points moves by N(0, variance) px, with the
  std scaled by size / 224; pixels are sampled bilinearly with edge clamping.
  """
  if grid < 2:
    raise ValueError(f"distort grid must be >= 2, got {grid}")
  images = _resize(images, size)
  std = math.sqrt(variance) * size / _PAPER_SIZE
  keys = jax.random.split(key, images.shape[0])
  shifts = jax.vmap(lambda k: jax.random.normal(k, (grid * grid, 2)))(keys)
  field = jnp.einsum("pk,nkc->ncp", _tps_matrix(grid, size), std * shifts,
                     precision=_HIGHEST).reshape(-1, 2, size, size)
  coords = np.indices((size, size), np.float32)[None] + field
  return jnp.clip(jax.vmap(_sample_bilinear)(images, coords), 0.0, 1.0), boxes


# ----------------------------------------------------------------------------
# Registry and composition.

OPS: dict[str, Op] = {
    "full": full,
    "identity": identity,
    "crop": crop,
    "lowres": lowres,
    "grayscale": grayscale,
    "edges": edges,
    "distort": distort,
}

# Ops whose output depends on the key; every other op is a function of the image and box alone.
RANDOM_OPS = {"distort"}

# Ops that also read a trained network: name -> (op, the key of the network's variables in a view's `variables`
# argument, also the name of the stage that trains it). Kept out of OPS, whose ops need only images, boxes, key.
NETWORK_OPS: dict[str, tuple[Op, str]] = {"lowres_sr": (lowres_sr, "sr")}


def is_random(spec: str) -> bool:
  """Whether the view `spec` (e.g. "crop+distort") draws random numbers, i.e. is not a fixed function."""
  return any(name.strip() in RANDOM_OPS for name in spec.split("+"))


def needs_variables(spec: str) -> tuple[str, ...]:
  """Networks whose variables the view `spec` reads (e.g. ("sr",) for "crop+lowres_sr"), in order of first use."""
  names = [name.strip() for name in spec.split("+")]
  return tuple(dict.fromkeys(NETWORK_OPS[name][1] for name in names if name in NETWORK_OPS))


def _find_op(name: str) -> Op | None:
  """The op registered as `name` in OPS or NETWORK_OPS, else None."""
  return OPS[name] if name in OPS else NETWORK_OPS[name][0] if name in NETWORK_OPS else None


def _known_ops() -> str:
  """Comma-separated registry names, for error messages."""
  return ", ".join(sorted({*OPS, *NETWORK_OPS}))


def _param_names(op: Op) -> tuple[str, ...]:
  """Keyword params an op takes besides `size` and the network `variables` given at call time."""
  return tuple(p.name for p in inspect.signature(op).parameters.values()
               if p.kind is p.KEYWORD_ONLY and p.name not in ("size", "variables"))


def _bind(name: str, size: int, params: Mapping[str, Any]) -> Op:
  """Returns op `name` with size and params bound, after checking both names."""
  op = _find_op(name)
  if op is None:
    raise ValueError(f"unknown degrade op '{name}'; known ops: {_known_ops()}")
  known = _param_names(op)
  for key in params:
    if key not in known:
      raise ValueError(
          f"degrade param '{name}.{key}' is not known; "
          f"{name} takes: {', '.join(known) or 'no params'}")
  return functools.partial(op, size=size, **dict(params))


def make_view(spec: str, size: int,
              params: Mapping[str, Mapping[str, Any]] | None = None) -> View:
  """Composes the '+'-separated ops in `spec` left to right into one view function.

  `params[op_name]` holds that op's keyword params; entries for ops that are
  not in `spec` are allowed (so views can share one params dict) but must name
  known ops. Op i gets `jax.random.fold_in(key, i)`. Ops in `NETWORK_OPS` get
  `variables=variables[NETWORK_OPS[name][1]]`; a view that needs them raises ValueError without them.
  """
  names = [name.strip() for name in spec.split("+")]
  if not all(names):
    raise ValueError(
        f"degrade spec {spec!r} is empty or has an empty op; "
        f"write e.g. 'crop+lowres' using: {_known_ops()}")
  params = params or {}
  for name in params:
    if _find_op(name) is None:
      raise ValueError(
          f"unknown degrade op '{name}' in params; known ops: {_known_ops()}")
  ops = [_bind(name, size, params.get(name, {})) for name in names]
  networks = [NETWORK_OPS[name][1] if name in NETWORK_OPS else None for name in names]
  needed = needs_variables(spec)

  def view(images: jax.Array, boxes: jax.Array, key: jax.Array,
           variables: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
    missing = [net for net in needed if net not in (variables or {})]
    if missing:
      raise ValueError(
          f"degrade view {spec!r} needs the trained network(s) {missing}, made by the stage(s) of the same "
          f"name: call it as view(images, boxes, key, variables={{{missing[0]!r}: ...}})")
    for i, (op, net) in enumerate(zip(ops, networks)):
      extra = {"variables": variables[net]} if net else {}
      images, boxes = op(images, boxes, jax.random.fold_in(key, i), **extra)
    return images, boxes

  return view
