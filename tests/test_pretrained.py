"""Tests for cqd_jax.pretrained and data_prep.convert_weights: safe weight loading, torchvision -> Flax.

Tests marked by a `torch` fixture run only where torch is importable; they check the restricted unpickler
against real `torch.save` files and the converted Flax ResNets against torchvision-architecture torch ResNets.
"""

import collections
import functools
import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from cqd_jax import models
from cqd_jax import pretrained
from cqd_jax.models import IMAGENET_MEAN, IMAGENET_STD, get_model

import helpers

NUM_CLASSES = 5
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(name="torch")
def torch_fixture():
  return helpers.require_torch()


def _init(arch: str, num_classes: int, seed: int, image_size: int = 32) -> dict:
  return models.init_variables(get_model(arch, num_classes), jax.random.key(seed), image_size)


@pytest.fixture(name="resnet18", scope="module")
def resnet18_fixture() -> dict:
  return _init("resnet18", NUM_CLASSES, seed=0)


def _as_torch(variables: dict, arch: str = "resnet18") -> dict[str, np.ndarray]:
  """torchvision-named state dict of Flax `arch` variables (HWIO -> OIHW, [in, out] -> [out, in])."""
  state_dict = {}
  for path, leaf in traverse_util.flatten_dict(variables).items():
    value = np.asarray(leaf)
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    state_dict[pretrained.torch_name(arch, path)] = np.ascontiguousarray(value)  # safetensors needs C order.
    if path[-1] == "mean":
      state_dict[pretrained.torch_name(arch, path).replace("running_mean", "num_batches_tracked")] = np.array(3)
  return state_dict


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ------------------------------------------------------------------------------------------ safe loading

class _Call:
  """Pickles as a call of `fn(arg)`: what a malicious checkpoint runs under plain pickle.load."""

  def __init__(self, fn, arg):
    self.fn, self.arg = fn, arg

  def __reduce__(self):
    return self.fn, (self.arg,)


def _attack(name: str, marker) -> _Call:
  if name == "os.system":
    return _Call(os.system, f"touch {marker}")
  return _Call(eval, f"open({str(marker)!r}, 'w').close()")


def _write_torch_like(path, payload: bytes, container: str) -> None:
  """A .pth whose object pickle is `payload`, in torch's legacy or zip layout."""
  if container == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("evil/data.pkl", payload)
      archive.writestr("evil/byteorder", "little")
  else:
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
    path.write_bytes(b"".join(pickle.dumps(obj, protocol=2) for obj in header) + payload)


@pytest.mark.parametrize("container", ["legacy", "zip"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_refuses_code_execution(tmp_path, attack, container):
  live, marker = tmp_path / "live", tmp_path / "pwned"
  pickle.loads(pickle.dumps(_attack(attack, live)))  # The payload is real: plain pickle runs it.
  assert live.exists()
  payload = pickle.dumps(collections.OrderedDict(w=_attack(attack, marker)), protocol=2)
  path = tmp_path / "evil.pth"
  _write_torch_like(path, payload, container)
  with pytest.raises(pretrained.UnsafePickleError) as error:
    pretrained.load_state_dict(path)
  # The global as the file names it (protocol 2, like torch.save, writes Python 2's __builtin__).
  assert {"os.system": f"{os.system.__module__}.system", "builtins.eval": "__builtin__.eval"}[attack] in str(
      error.value)
  assert str(path) in str(error.value)
  assert not marker.exists()


def test_build_cannot_poison_later_loads(tmp_path, torch):
  # pickle's BUILD opcode sets the state of what a global resolves to: here torch.FloatStorage's dtype.
  poison = tmp_path / "poison.pth"
  _write_torch_like(poison, pickle.PROTO + b"\x02" + pickle.GLOBAL + b"torch\nFloatStorage\n" + pickle.EMPTY_DICT
                    + pickle.UNICODE + b"dtype\n" + pickle.INT + b"1\n" + pickle.SETITEM + pickle.BUILD
                    + pickle.STOP, "legacy")
  with pytest.raises(pretrained.WeightsError, match=re.escape(str(poison))):
    pretrained.load_state_dict(poison)
  good = tmp_path / "good.pth"
  torch.save({"w": torch.arange(4.0)}, good, _use_new_zipfile_serialization=False)
  np.testing.assert_array_equal(pretrained.load_state_dict(good)["w"], np.arange(4.0, dtype=np.float32))


def test_refuses_pickled_npz(tmp_path):
  path = tmp_path / "w.npz"
  np.savez(path, w=np.array([{"a": 1}], dtype=object))
  with pytest.raises(pretrained.WeightsError, match=re.escape(str(path))):
    pretrained.load_state_dict(path)


def _save_arrays(path, arrays: dict[str, np.ndarray]) -> None:
  if path.suffix == ".npz":
    np.savez(path, **arrays)
  else:
    safetensors.numpy.save_file(arrays, path)


def _assert_truncations_fail(path) -> None:
  data = path.read_bytes()
  for size in (0, 7, len(data) // 3, len(data) // 2, len(data) - 9):
    path.write_bytes(data[:size])
    with pytest.raises(pretrained.WeightsError, match=re.escape(str(path))):
      pretrained.load_state_dict(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_array_formats_round_trip_and_truncation(tmp_path, suffix):
  arrays = {"conv1.weight": np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4),
            "bn1.num_batches_tracked": np.array(7, np.int64)}
  path = tmp_path / f"w{suffix}"
  _save_arrays(path, arrays)
  _assert_trees_equal(pretrained.load_state_dict(path), arrays)
  _assert_truncations_fail(path)


def test_unreadable_files_name_the_file(tmp_path):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"\x80\x02this is not a checkpoint")
  with pytest.raises(pretrained.WeightsError, match=re.escape(str(garbage))):
    pretrained.load_state_dict(garbage)
  with pytest.raises(pretrained.WeightsError, match="unsupported weights file type"):
    pretrained.load_state_dict(tmp_path / "w.ckpt")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    pretrained.load_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_torch_save_formats(tmp_path, torch, zip_format):
  base = torch.arange(20, dtype=torch.float32)
  state_dict = collections.OrderedDict(
      conv=torch.randn(4, 3, 3, 3), transposed=torch.randn(3, 5).t(), base=base,
      view=base[5:15].view(2, 5), half=torch.randn(6).half(), bf16=torch.randn(6).bfloat16(),
      long=torch.tensor(12345678901), int8=torch.arange(-3, 3, dtype=torch.int8), flags=torch.tensor([True, False]),
      param=torch.nn.Parameter(torch.randn(2, 2)), empty=torch.zeros(0, 3))
  path = tmp_path / "w.pth"
  torch.save(state_dict, path, _use_new_zipfile_serialization=zip_format)
  loaded = pretrained.load_state_dict(path)
  assert list(loaded) == list(state_dict)
  for key, tensor in state_dict.items():
    expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
    assert loaded[key].shape == expected.shape, key
    assert loaded[key].dtype == (jnp.bfloat16 if tensor.dtype == torch.bfloat16 else expected.dtype), key
    np.testing.assert_array_equal(loaded[key].astype(expected.dtype), expected, err_msg=key)
  if zip_format:  # A storage record the pickle references is absent.
    incomplete = tmp_path / "incomplete.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(incomplete, "w") as target:
      for name in source.namelist():
        if not name.endswith("/data/0"):
          target.writestr(name, source.read(name))
    with pytest.raises(pretrained.WeightsError, match=re.escape(str(incomplete))):
      pretrained.load_state_dict(incomplete)
  _assert_truncations_fail(path)


# ---------------------------------------------------------------------------------------------- to_flax

def test_torch_names():
  name = functools.partial(pretrained.torch_name, "resnet18")
  assert name(("params", "conv1", "kernel")) == "conv1.weight"
  assert name(("params", "layer2_0", "downsample_conv", "kernel")) == "layer2.0.downsample.0.weight"
  assert name(("params", "layer4_1", "downsample_bn", "scale")) == "layer4.1.downsample.1.weight"
  assert name(("batch_stats", "layer1_1", "bn2", "var")) == "layer1.1.bn2.running_var"
  assert name(("params", "head", "bias")) == "fc.bias"
  assert pretrained.torch_name("vgg16", ("params", "features_28", "kernel")) == "features.28.weight"
  assert pretrained.torch_name("vgg16", ("params", "classifier_3", "bias")) == "classifier.3.bias"
  assert pretrained.torch_name("vgg16", ("params", "head", "kernel")) == "classifier.6.weight"
  assert pretrained.head_key("vgg16") == "classifier.6.weight" and pretrained.head_key("resnet50") == "fc.weight"


def test_round_trip(resnet18):
  template = _init("resnet18", NUM_CLASSES, seed=1)
  _assert_trees_equal(pretrained.to_flax(_as_torch(resnet18), "resnet18", template, keep_head=True), resnet18)


def test_mismatches_are_named(resnet18):
  state_dict = _as_torch(resnet18)
  del state_dict["layer3.1.bn2.running_var"]
  state_dict["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  state_dict["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(pretrained.WeightsError) as error:
    pretrained.to_flax(state_dict, "resnet18", resnet18, keep_head=True)
  message = str(error.value)
  assert "missing keys (1): layer3.1.bn2.running_var" in message
  assert "unexpected keys (1): layer5.0.conv1.weight" in message
  assert "layer1.0.conv1.weight has shape (64, 64, 1, 1), model expects (64, 64, 3, 3)" in message
  with pytest.raises(ValueError, match="no torchvision weight mapping for 'vgg_m'"):
    pretrained.to_flax(_as_torch(resnet18), "vgg_m", resnet18, keep_head=True)


def test_head_kept_or_reinitialised(resnet18):
  template = _init("resnet18", 7, seed=1)
  state_dict = _as_torch(resnet18)
  with pytest.raises(pretrained.WeightsError) as error:
    pretrained.to_flax(state_dict, "resnet18", template, keep_head=True)
  assert "fc.weight has shape (5, 512), model expects (7, 512)" in str(error.value)
  assert "keep_head=False" in str(error.value)
  variables = pretrained.to_flax(state_dict, "resnet18", template, keep_head=False)
  _assert_trees_equal(variables["params"]["head"], template["params"]["head"])
  without_head = lambda v: {k: v for k, v in traverse_util.flatten_dict(v).items() if k[1] != "head"}
  _assert_trees_equal(without_head(variables), without_head(resnet18))


def test_init_variables(tmp_path, resnet18):
  path = tmp_path / "resnet18.npz"
  np.savez(path, **_as_torch(resnet18))
  model, rng = get_model("resnet18", 7), jax.random.key(3)
  _assert_trees_equal(pretrained.init_variables(model, rng, 32, ""), models.init_variables(model, rng, 32))
  variables = pretrained.init_variables(model, rng, 32, str(path))
  assert variables["params"]["head"]["kernel"].shape == (512, 7)
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], resnet18["params"]["conv1"]["kernel"])
  same_classes = pretrained.init_variables(get_model("resnet18", NUM_CLASSES), rng, 32, str(path))
  _assert_trees_equal(same_classes, resnet18)
  with pytest.raises(ValueError, match="pass the path of a local"):
    pretrained.init_variables(model, rng, 32, "imagenet:resnet18")
  with pytest.raises(ValueError, match="available for .* only, not VGGM"):
    pretrained.init_variables(get_model("vgg_m", 7, fc_width=8), rng, 32, str(path))


# ------------------------------------------------------------------------------------ Flax vs torch


def _torchvision_resnet(torch, arch: str, num_classes: int):
  """torchvision's ResNet-18/50 (module names, padding, v1.5 strides) in plain torch, in eval mode."""
  nn = torch.nn

  def conv_bn(inplanes, planes, kernel, stride=1):
    return nn.Conv2d(inplanes, planes, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(planes)

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1, self.bn1 = conv_bn(inplanes, planes, 3, stride)
      self.conv2, self.bn2 = conv_bn(planes, planes, 3)
      self.relu, self.downsample = nn.ReLU(), downsample

    def forward(self, x):
      out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1, self.bn1 = conv_bn(inplanes, planes, 1)
      self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
      self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
      self.relu, self.downsample = nn.ReLU(), downsample

    def forward(self, x):
      out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
      out = self.bn3(self.conv3(out))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):

    def __init__(self, block, layers):
      super().__init__()
      self.inplanes = 64
      self.conv1, self.bn1 = conv_bn(3, 64, 7, 2)
      self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
      for i, blocks in enumerate(layers):
        setattr(self, f"layer{i + 1}", self._make_layer(block, 64 * 2**i, blocks, 1 if i == 0 else 2))
      self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
      downsample = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        downsample = nn.Sequential(*conv_bn(self.inplanes, planes * block.expansion, 1, stride))
      layers = [block(self.inplanes, planes, stride, downsample)]
      self.inplanes = planes * block.expansion
      layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
      return nn.Sequential(*layers)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  torch.manual_seed(0)
  model = ResNet(*{"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}[arch])
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):  # Non-trivial BN parameters and statistics.
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_matches_torchvision_architecture(tmp_path, torch, arch):
  import safetensors.torch  # pylint: disable=g-import-not-at-top (needs torch)
  torch_model = _torchvision_resnet(torch, arch, num_classes=10)
  path = tmp_path / f"{arch}.safetensors"
  safetensors.torch.save_file(torch_model.state_dict(), path)
  model = get_model(arch, 10)
  variables = pretrained.init_variables(model, jax.random.key(0), 64, str(path))
  images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  normalized = (images - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(normalized).permute(0, 3, 1, 2)).numpy()
  assert np.std(expected) > 0.1  # The comparison is not between near-zero logits.
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def _torchvision_vgg16(torch, num_classes: int):
  """torchvision's VGG-16 (configuration "D", no BatchNorm) in plain torch, in eval mode."""
  nn, layers, channels = torch.nn, [], 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
      channels = v

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      self.features, self.avgpool = nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                                      nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                                      nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  torch.manual_seed(0)
  model = VGG()
  with torch.no_grad():  # Scaled so that activations neither vanish nor explode through 16 layers.
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
        module.bias.normal_(0.0, 0.1)
  return model.eval()


@pytest.mark.slow
def test_vgg16_matches_torchvision_architecture(tmp_path, torch):
  """Converted once, the weights serve every input size (adaptive 7x7 pooling); 64 and 112 px give conv5 maps
  of 2x2 and 3x3: uneven adaptive-pool bins."""
  torch_model = _torchvision_vgg16(torch, num_classes=10)
  path = tmp_path / "vgg16.pth"
  torch.save(torch_model.state_dict(), path)  # Read back by the restricted unpickler, without torch.
  model = get_model("vgg16", 10)
  variables = pretrained.init_variables(model, jax.random.key(0), 64, str(path))
  for image_size in (64, 112):
    images = np.random.default_rng(1).uniform(size=(2, image_size, image_size, 3)).astype(np.float32)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    normalized = (images - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    with torch.no_grad():
      expected = torch_model(torch.from_numpy(normalized).permute(0, 3, 1, 2)).numpy()
    assert np.std(expected) > 0.1
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max(), rtol=0, err_msg=image_size)


# ---------------------------------------------------------------------------------------------------- CLI

def _convert(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "data_prep.convert_weights", *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_convert_weights_cli(tmp_path, resnet18):
  state_dict = _as_torch(resnet18)
  source, out = tmp_path / "resnet18.safetensors", tmp_path / "resnet18.npz"
  safetensors.numpy.save_file(state_dict, source)
  result = _convert(f"--in={source}", "--arch=resnet18", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert f"{out}: {len(state_dict)} arrays" in result.stdout
  _assert_trees_equal(pretrained.load_state_dict(out), state_dict)
  assert sorted(os.listdir(tmp_path)) == ["resnet18.npz", "resnet18.safetensors"]
  wrong = _convert(f"--in={source}", "--arch=resnet50", f"--out={tmp_path / 'resnet50.npz'}")
  assert wrong.returncode != 0
  assert "does not fit resnet50" in wrong.stderr
  assert sorted(os.listdir(tmp_path)) == ["resnet18.npz", "resnet18.safetensors"]
