"""Image classifiers for teacher and student networks, built by name via `get_model`.

Every model is a linen Module with fields `num_classes` and `dtype` (compute dtype), called as
`model.apply(variables, images, train=bool)` on NHWC float32 RGB images in [0, 1]; it normalises
internally and returns float32 logits [N, num_classes] from a final Dense named "head".

Named features, for methods that compare more than logits: `apply_with_features` returns them beside the
logits (Flax `sow` into the "intermediates" collection, so a plain `apply` neither keeps nor computes more).
Every feature is a model's activation after its nonlinearity, NHWC for maps:

- `stem`: the first convolution block, before the max-pool (resnet*, stride 2; efficientnet_lite*, stride 2).
- `stage1`..`stageN`: the end of each stage, before the next downsampling: small_cnn one per width (strides
  1, 2, 4, ...); vgg_m its five convolutions (strides 2, 8, 16, 16, 16); vgg16 its five blocks
  before each max-pool (strides 1 to 16); resnet* its four layers (strides 4, 8, 16, 32); efficientnet_lite*
  its seven block stages (strides 2, 4, 8, 16, 16, 32, 32).
- `pre_logits`: the vector the head reads (before dropout): the global average for small_cnn, resnet* and
  efficientnet_lite* (after its 1280-wide head convolution), the last fully connected layer for vgg_m and
  vgg16.

Adapters (`ADAPTERS`, models/adapters.py) map a student's feature to the shape of a teacher's, for feature
terms between networks of different widths or input sizes.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn

from cqd_jax.models.adapters import ADAPTERS
from cqd_jax.models.common import (FEATURES, IMAGENET_MEAN, IMAGENET_STD, apply_with_features, count_params,
                                   flops_per_image, images_per_second, init_variables,
                                   normalize_images)
from cqd_jax.models.efficientnet_lite import (EfficientNetLite, EfficientNetLite0, EfficientNetLite1,
                                             EfficientNetLite2)
from cqd_jax.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50
from cqd_jax.models.small_cnn import SmallCNN
from cqd_jax.models.vgg import VGG, VGG16
from cqd_jax.models.vgg_m import VGGM

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "vgg_m": VGGM,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vgg16": VGG16,
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}


def model_options(name: str) -> tuple[str, ...]:
  """Keyword arguments `get_model(name, ...)` accepts besides `num_classes`."""
  ctor, fixed = MODELS[name], set()
  while isinstance(ctor, functools.partial):
    fixed |= set(ctor.keywords)
    ctor = ctor.func
  excluded = fixed | {"parent", "name", "num_classes"}
  return tuple(f.name for f in dataclasses.fields(ctor) if f.init and f.name not in excluded)


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the registered model `name`; unknown names or options raise ValueError / TypeError."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
  allowed = model_options(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise TypeError(f"Model {name!r} got unknown option(s) {unknown}; allowed: {list(allowed)}.")
  return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "ADAPTERS", "FEATURES", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "BasicBlock", "Bottleneck", "EfficientNetLite",
    "EfficientNetLite0", "EfficientNetLite1", "EfficientNetLite2", "ResNet", "ResNet18", "ResNet50", "SmallCNN",
    "VGG", "VGG16", "VGGM", "apply_with_features", "count_params", "flops_per_image", "get_model",
    "images_per_second", "init_variables", "model_options", "normalize_images",
]
