"""Pieces shared by all classifiers: fixed input normalisation, BatchNorm settings, named features,
parameter and FLOP counting, measured inference speed."""

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Dtype = Any

# ImageNet channel statistics (torchvision convention); inputs are RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(x: jax.Array, dtype: Dtype) -> jax.Array:
  """Standardises NHWC RGB images in [0, 1] with the fixed ImageNet mean/std and casts to `dtype`."""
  if x.ndim != 4 or x.shape[-1] != len(IMAGENET_MEAN):
    raise ValueError(f"Expected NHWC RGB images with 3 channels, got shape {x.shape}.")
  x = jnp.asarray(x, jnp.float32)
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return x.astype(dtype)


def batch_norm(train: bool, dtype: Dtype) -> ModuleDef:
  """BatchNorm factory with the library-wide settings (momentum 0.9, eps 1e-5, "batch_stats" collection)."""
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


def init_variables(model: nn.Module, rng: jax.Array, image_size: int) -> dict[str, Any]:
  """Random variables of `model` for image_size x image_size inputs, made by one compiled program (eager
  initialisation dispatches every op of the forward pass separately: 27 s for EfficientNet-Lite0 on CPU)."""
  init = lambda rng: model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  return jax.jit(init)(rng)


# The collection every model sows its named features into (models/__init__.py lists them). Flax skips a sow
# unless the collection is mutable in that apply, so a plain `model.apply` computes and returns logits only.
FEATURES = "intermediates"


def sow_feature(module: nn.Module, name: str, x: jax.Array) -> None:
  """Records `x` as the feature `name` of `module` (kept as is, not appended to a tuple)."""
  module.sow(FEATURES, name, x, init_fn=lambda: None, reduce_fn=lambda _, new: new)


def apply_with_features(model: nn.Module | Callable[..., Any], variables: Any, images: jax.Array, *,
                        train: bool = False, mutable: Sequence[str] = (), **kwargs: Any
                        ) -> tuple[jax.Array, dict[str, jax.Array], dict]:
  """`model.apply` (`model`: the module or its apply function) that also returns the named features:
  (logits, {name: array}, the updated `mutable` collections, e.g. batch_stats in training)."""
  apply = model.apply if isinstance(model, nn.Module) else model
  logits, state = apply(variables, images, train=train, mutable=[*mutable, FEATURES], **kwargs)
  state = dict(state)
  return logits, dict(state.pop(FEATURES)), state


def flops_per_image(model: nn.Module, variables: Any, image_size: int) -> float:
  """FLOPs of one image's evaluation-mode forward pass at image_size x image_size, by XLA's cost analysis of
  the lowered program (shapes only: nothing is compiled or run)."""
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  lowered = jax.jit(functools.partial(model.apply, train=False)).lower(shapes, images)
  return float(lowered.cost_analysis()["flops"])


def count_params(variables: Any) -> int:
  """Number of trainable scalars: the "params" collection if present (buffers such as batch_stats excluded)."""
  if isinstance(variables, dict) and "params" in variables:
    variables = variables["params"]
  return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(variables))


def images_per_second(model: nn.Module, variables: Any, image_size: int, batch_size: int, mesh: Any = None,
                      min_seconds: float = 1.0, min_batches: int = 3) -> float:
  """Measured evaluation-mode forward passes per second on random batches of `batch_size` images at
  image_size px (the batch split over `mesh`'s "data" axis if given); compiled and warmed up first, then
  timed for at least `min_batches` batches and `min_seconds`."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  fn = jax.jit(functools.partial(model.apply, train=False))
  images = jax.random.uniform(jax.random.key(0), (batch_size, image_size, image_size, 3))
  if mesh is not None:
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    images = jax.device_put(images, NamedSharding(mesh, P("data")))
  jax.block_until_ready(fn(variables, images))
  batches, start = 0, time.perf_counter()
  while batches < min_batches or time.perf_counter() - start < min_seconds:
    jax.block_until_ready(fn(variables, images))
    batches += 1
  return batches * batch_size / (time.perf_counter() - start)
