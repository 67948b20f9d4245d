"""Plain-PyTorch reference of the fused CQD train step and of four of its architectures, for benchmarking.

The modules reproduce `cqd_jax.models` layer for layer: small_cnn, resnet18 (torchvision layout and names),
vgg_m and efficientnet_lite0 (lukemelas EfficientNet-PyTorch names, TF-"same" padding with lax's asymmetric
split), with the same input normalisation inside the model, BatchNorm epsilon and momentum (torch's momentum
is 1 - Flax's), ReLU6, dropout and head. `load_flax_variables` copies Flax variables into them, so both
frameworks can run on the same weights; resnet18 and efficientnet_lite0 state dicts also load into Flax with
`cqd_jax.pretrained.to_flax`.

One known difference of the modules: torch updates BatchNorm's running variance with the unbiased batch
variance, Flax with the biased one (a factor n / (n - 1), n = batch x height x width); the train step's loss
uses the batch statistics and is not affected.

`CQDStep` is `cqd_jax.train.train_step` for method "cqd" without augmentation (flip off, crop margin 0): uint8
images -> float, view A (`crop` of the box, or `full`), view B = view A + `lowres`, frozen teacher on A in eval
mode, student forward/backward on B in train mode, loss = CE + lambda * soft CE at temperature T, SGD with
momentum and weight decay on kernels only. It differs from the JAX step in what it leaves out: no non-finite
guard (the JAX step computes the gradient norm and keeps the old state when the loss or a gradient is not
finite), no accuracy metrics, a constant learning rate; and it crops once for both views (the JAX step's two
views each start with the crop, which XLA may or may not merge). The views match cqd_jax.degrade's to float
rounding (see `crop` and `resize`).
"""

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from cqd_jax import pretrained

# Input normalisation of cqd_jax.models.common (ImageNet mean/std) and of EfficientNet-Lite ((255x - 127) / 128).
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_LITE_MEAN, _LITE_STD = (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3
_PAPER_SIZE = 224  # cqd_jax.degrade's reference size: lowres goes to round(size * 50 / 224) px by default
_FLAX_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _batch_norm(features: int, flax_momentum: float, eps: float) -> nn.BatchNorm2d:
  """BatchNorm2d with Flax's settings: Flax keeps `momentum` of the old statistics, torch replaces `momentum`."""
  return nn.BatchNorm2d(features, eps=eps, momentum=1.0 - flax_momentum)


class _Normalize(nn.Module):
  """(x - mean) / std per channel of NCHW images in [0, 1], as the Flax models do first (no parameters)."""

  def __init__(self, mean: Sequence[float], std: Sequence[float]):
    super().__init__()
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return (x - self.mean) / self.std


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF-"same" (lo, hi) padding of one spatial dim, as lax.padtype_to_pads: any odd extra at the end."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
  """nn.Conv2d with TF-"same" padding for the actual input size (an explicit pad only when asymmetric)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = (same_pads(n, k, s) for n, k, s in zip(x.shape[-2:], self.kernel_size,
                                                                          self.stride))
    if top == bottom and left == right:
      return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), groups=self.groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, groups=self.groups)


class MaxPool2dSame(nn.Module):
  """Max-pooling with TF-"same" padding (padded with -inf, as flax's max_pool)."""

  def __init__(self, kernel: int, stride: int):
    super().__init__()
    self.kernel, self.stride = kernel, stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = (same_pads(n, self.kernel, self.stride) for n in x.shape[-2:])
    if top == bottom and left == right and 2 * top <= self.kernel:
      return F.max_pool2d(x, self.kernel, self.stride, (top, left))
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), self.kernel, self.stride)


# ------------------------------------------------------------------------------------------------ models

class SmallCNN(nn.Module):
  """cqd_jax.models.SmallCNN: conv3x3-BN-ReLU blocks with 2x2 max-pools between them, GAP, dropout, head."""

  def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256), dropout_rate: float = 0.0):
    super().__init__()
    self.normalize = _Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    self.widths = tuple(widths)
    channels = 3
    for i, width in enumerate(self.widths, start=1):
      setattr(self, f"conv{i}", nn.Conv2d(channels, width, 3, padding=1, bias=False))
      setattr(self, f"bn{i}", _batch_norm(width, 0.9, 1e-5))
      channels = width
    self.dropout = nn.Dropout(dropout_rate)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.normalize(x)
    for i in range(1, len(self.widths) + 1):
      if i > 1:
        x = F.max_pool2d(x, 2, 2)
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
    return self.head(self.dropout(x.mean((2, 3))))


class BasicBlock(nn.Module):
  """torchvision's ResNet BasicBlock: two 3x3 conv-BN layers, identity or 1x1-conv-BN `downsample` shortcut."""

  def __init__(self, inplanes: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False), _batch_norm(planes, 0.9, 1e-5)
    self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), _batch_norm(planes, 0.9, 1e-5)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                      _batch_norm(planes, 0.9, 1e-5))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
  """torchvision's ResNet-18 with module names of its state dict (conv1, bn1, layer{s}.{b}, fc)."""

  def __init__(self, num_classes: int):
    super().__init__()
    self.normalize = _Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), _batch_norm(64, 0.9, 1e-5)
    inplanes = 64
    for i in range(4):
      planes = 64 * 2**i
      setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, 1 if i == 0 else 2),
                                                   BasicBlock(planes, planes, 1)))
      inplanes = planes
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(self.normalize(x)))), 3, 2, 1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(x.mean((2, 3)))


# (features, kernel, stride, max-pool after) of VGG-M's conv1..conv5, as cqd_jax.models.vgg_m.
_VGG_M_CONVS = ((96, 7, 2, True), (256, 5, 2, True), (512, 3, 1, False), (512, 3, 1, False), (512, 3, 1, True))


class VGGM(nn.Module):
  """cqd_jax.models.VGGM: five "same"-padded conv-BN-ReLU layers (3x3/s2 "same" max-pools), GAP, fc6, fc7, head."""

  def __init__(self, num_classes: int, fc_width: int = 4096, dropout_rate: float = 0.0):
    super().__init__()
    self.normalize = _Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    channels, self.pools = 3, []
    for i, (features, kernel, stride, pool) in enumerate(_VGG_M_CONVS, start=1):
      setattr(self, f"conv{i}", Conv2dSame(channels, features, kernel, stride, bias=False))
      setattr(self, f"bn{i}", _batch_norm(features, 0.9, 1e-5))
      self.pools.append(pool)
      channels = features
    self.pool = MaxPool2dSame(3, 2)
    self.fc6, self.fc7 = nn.Linear(channels, fc_width), nn.Linear(fc_width, fc_width)
    self.dropout = nn.Dropout(dropout_rate)
    self.head = nn.Linear(fc_width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.normalize(x)
    for i, pool in enumerate(self.pools, start=1):
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
      if pool:
        x = self.pool(x)
    x = x.mean((2, 3))
    x = self.dropout(F.relu(self.fc6(x)))
    x = self.dropout(F.relu(self.fc7(x)))
    return self.head(x)


class MBConv(nn.Module):
  """EfficientNet-Lite's inverted residual block, lukemelas names: _expand_conv/_bn0, _depthwise_conv/_bn1,
  _project_conv/_bn2; ReLU6, no squeeze-excitation, identity skip when the shapes match."""

  def __init__(self, inplanes: int, planes: int, kernel: int, stride: int, expand: int, bn_momentum: float):
    super().__init__()
    mid = inplanes * expand
    if expand != 1:
      self._expand_conv = nn.Conv2d(inplanes, mid, 1, bias=False)
      self._bn0 = _batch_norm(mid, bn_momentum, 1e-3)
    self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
    self._bn1 = _batch_norm(mid, bn_momentum, 1e-3)
    self._project_conv = nn.Conv2d(mid, planes, 1, bias=False)
    self._bn2 = _batch_norm(planes, bn_momentum, 1e-3)
    self.expand, self.skip = expand, stride == 1 and inplanes == planes

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return x + y if self.skip else y


# EfficientNet-B0's stages (repeats, kernel, stride, expand, features): Lite0 uses them unscaled.
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                 (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class EfficientNetLite0(nn.Module):
  """cqd_jax.models.EfficientNetLite0 with the lukemelas EfficientNet-PyTorch state-dict names."""

  def __init__(self, num_classes: int, dropout_rate: float | None = None, bn_momentum: float = 0.99):
    super().__init__()
    self.normalize = _Normalize(_LITE_MEAN, _LITE_STD)
    self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
    self._bn0 = _batch_norm(32, bn_momentum, 1e-3)
    blocks, channels = [], 32
    for repeats, kernel, stride, expand, features in _LITE0_STAGES:
      for j in range(repeats):
        blocks.append(MBConv(channels, features, kernel, stride if j == 0 else 1, expand, bn_momentum))
        channels = features
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
    self._bn1 = _batch_norm(1280, bn_momentum, 1e-3)
    self._dropout = nn.Dropout(0.2 if dropout_rate is None else dropout_rate)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu6(self._bn0(self._conv_stem(self.normalize(x))))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(self._dropout(x.mean((2, 3))))


MODELS: dict[str, type[nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "vgg_m": VGGM,
    "efficientnet_lite0": EfficientNetLite0,
}


def get_model(name: str, num_classes: int, **options: Any) -> nn.Module:
  """The torch twin of `cqd_jax.models.get_model(name, num_classes, **options)`, in channels_last format."""
  if name not in MODELS:
    raise ValueError(f"no torch reference for model {name!r}; known: {', '.join(MODELS)}")
  return MODELS[name](num_classes, **options).to(memory_format=torch.channels_last)


def torch_key(arch: str, path: tuple[str, ...]) -> str:
  """State-dict key of a Flax variable path (collection first): cqd_jax.pretrained's naming where it has one, else
  the Flax module names joined by dots (small_cnn, vgg_m)."""
  if arch in pretrained.ARCH_NAMING:
    return pretrained.torch_name(arch, path)
  _, *modules, leaf = path
  return ".".join([*modules, _FLAX_LEAVES[leaf]])


def load_flax_variables(model: nn.Module, arch: str, variables: Mapping[str, Any]) -> None:
  """Copies Flax `variables` of `arch` into the torch `model` (HWIO -> OIHW, [in, out] -> [out, in]).

  Every parameter and BatchNorm statistic of the torch model must be covered (num_batches_tracked aside).
  """
  state = model.state_dict()
  copied = set()
  for path, leaf in traverse_util.flatten_dict(dict(variables)).items():
    key = torch_key(arch, path)
    value = np.array(leaf)  # a writable copy (device arrays' numpy views are read-only)
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    if key not in state or tuple(state[key].shape) != value.shape:
      raise ValueError(f"Flax variable {'/'.join(path)} {value.shape} does not fit torch {key} "
                       f"{tuple(state[key].shape) if key in state else '(missing)'}")
    with torch.no_grad():
      state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    copied.add(key)
  uncovered = [key for key in state if key not in copied and not key.endswith("num_batches_tracked")]
  if uncovered:
    raise ValueError(f"torch {arch} tensors without a Flax variable: {uncovered[:10]}")


# ------------------------------------------------------------------------------------------------- views

def _triangle(x: torch.Tensor) -> torch.Tensor:
  return torch.clamp(1.0 - x, min=0.0)


def _weight_matrix(in_size: int, out_size: int, scale: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
  """[N, out, in] linear-interpolation weights of jax.image.scale_and_translate(antialias=True), per example.

  The same formula as jax's `compute_weight_mat`: a triangle kernel widened by 1 / scale when downsampling,
  weights normalised over the input pixels, output pixels whose centre falls outside the input zeroed.
  """
  inv_scale = 1.0 / scale[:, None, None]
  kernel_scale = torch.clamp(inv_scale, min=1.0)
  sample = (torch.arange(out_size, dtype=scale.dtype, device=scale.device)[None, :, None] + 0.5) * inv_scale \
      - translation[:, None, None] * inv_scale - 0.5
  weights = _triangle(torch.abs(sample - torch.arange(in_size, dtype=scale.dtype, device=scale.device)) / kernel_scale)
  total = weights.sum(-1, keepdim=True)
  weights = torch.where(total.abs() > 1000.0 * np.finfo(np.float32).eps,
                        weights / torch.where(total != 0, total, 1.0), 0.0)
  return torch.where((sample >= -0.5) & (sample <= in_size - 0.5), weights, 0.0)


def crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
  """cqd_jax.degrade.crop: each example's box resampled to size x size (bilinear, antialiased), NHWC -> NHWC.

  torch's interpolate has no per-example fractional box, so the separable weights are built as jax builds them
  and applied as two batched contractions; the result equals jax's to float rounding (up to 3e-5 measured).
  """
  n, h, w, _ = images.shape
  extent = torch.tensor([h, w], dtype=torch.float32, device=images.device)
  start = torch.minimum(boxes[:, :2].clamp(0.0, 1.0) * extent, extent - 1.0)
  span = torch.clamp(boxes[:, 2:].clamp(0.0, 1.0) * extent - start, min=1.0)
  scale = size / span
  rows = _weight_matrix(h, size, scale[:, 0], -start[:, 0] * scale[:, 0])
  cols = _weight_matrix(w, size, scale[:, 1], -start[:, 1] * scale[:, 1])
  out = torch.bmm(rows, images.reshape(n, h, -1)).reshape(n, size, w, -1)
  return torch.einsum("nxw,nywc->nyxc", cols, out).clamp(0.0, 1.0)


def resize(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
  """cqd_jax.degrade._resize on NCHW: antialiased "bilinear" or "bicubic" (Keys a = -0.5), clipped to [0, 1].

  torch's antialiased kernels (Pillow's algorithm) use the same widened kernels and normalised weights as
  jax.image.resize; the outputs agree to float rounding (~1e-6), computed in a different order.
  """
  return F.interpolate(images, size=(size, size), mode=mode, antialias=True, align_corners=False).clamp(0.0, 1.0)


def make_views(view_a: str, size: int, low: int | None = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                        tuple[torch.Tensor, torch.Tensor]]:
  """(images NHWC float, boxes) -> (x, z) NCHW channels_last: view A ("crop" or "full") and z = lowres(A)."""
  if view_a not in ("crop", "full"):
    raise ValueError(f"view A must be 'crop' or 'full', got {view_a!r}")
  low = max(1, round(size * 50 / _PAPER_SIZE)) if low is None else low

  def views(images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if view_a == "crop":
      x = crop(images, boxes, size).permute(0, 3, 1, 2)  # a channels_last view of the NHWC result
    else:
      x = resize(images.permute(0, 3, 1, 2), size, "bilinear")
    z = resize(resize(x, low, "bicubic"), size, "bicubic")
    return (x.contiguous(memory_format=torch.channels_last), z.contiguous(memory_format=torch.channels_last))

  return views


# -------------------------------------------------------------------------------------------- train step

class CQDStep:
  """One CQD SGD step in torch, the same computation as cqd_jax.train.train_step for method "cqd".

  Call with uint8 images [N, H, W, 3] (stored layout), float boxes [N, 4] (ymin, xmin, ymax, xmax) and int64
  labels [N]; returns the loss (a 0-d tensor, computed before the update).
  """

  def __init__(self, student: nn.Module, teacher: nn.Module, *, view_a: str, size: int, low: int | None = None,
               lr: float, momentum: float, weight_decay: float, temperature: float, weight: float):
    self.student, self.teacher = student.train(), teacher.eval()
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.views = make_views(view_a, size, low)
    self.temperature, self.weight = temperature, weight
    params = list(student.parameters())
    # optax.add_decayed_weights with the kernels-only mask, then SGD with momentum: torch's coupled decay.
    self.optimizer = torch.optim.SGD(
        [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr, momentum=momentum)

  def __call__(self, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
      x, z = self.views(images.float() / 255.0, boxes)
      teacher_logits = self.teacher(x)
    logits = self.student(z)
    targets = F.softmax(teacher_logits / self.temperature, dim=-1)
    loss = F.cross_entropy(logits, labels) + self.weight * F.cross_entropy(logits / self.temperature, targets)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.detach()
