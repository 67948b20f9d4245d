"""Tests for benchmarks.torch_reference: the PyTorch twins compute what the Flax models and the fused step compute.

With the same weights in both frameworks: eval-mode logits agree to float rounding (also with Lite0's ImageNet
weights, loaded strictly into the torch model by their lukemelas names), the views agree with cqd_jax.degrade's,
the fused JAX step (benchmarks.step.JaxStep) and the torch step compute the same first loss (three steps for
small_cnn), and the torch optimizer updates as make_optimizer's. resnet18 and efficientnet_lite0 weights go
torch -> Flax through cqd_jax.pretrained (torchvision and lukemelas names, every name and shape checked),
small_cnn and vgg_m Flax -> torch through load_flax_variables. Skipped without torch.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cqd_jax import degrade
from cqd_jax import models
from cqd_jax import pretrained
from cqd_jax import train
from cqd_jax.models import get_model

import helpers

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch", reason=helpers.NO_TORCH)  # the whole module needs it
if helpers.REPO not in sys.path:
  sys.path.insert(0, helpers.REPO)
from benchmarks import step as bench_step  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_CLASSES = 10
SIZE = 64
ARCHS = ["small_cnn", "resnet18", "vgg_m", "efficientnet_lite0"]
# Small enough to run fast, large enough to use every layer type; Lite0 without dropout, so that the train-mode
# losses are deterministic.
OPTIONS = {"small_cnn": {}, "resnet18": {}, "vgg_m": {"fc_width": 256}, "efficientnet_lite0": {"dropout_rate": 0.0}}
# Eval-mode logits, relative to their largest magnitude: the same float32 sums in another order through up to
# 50 layers (measured: 3e-7 small_cnn, 8e-7 resnet18, 1.2e-6 vgg_m, 7.5e-6 efficientnet_lite0, 2.5e-6 with
# Lite0's ImageNet weights).
LOGIT_RTOL = 1e-4
# Step losses (measured: 1.4e-7 small_cnn, resnet18 and small_cnn's third step, 0 vgg_m, 6.9e-6 Lite0, whose
# train-mode BatchNorm through 50 layers amplifies rounding most).
LOSS_RTOL = 3e-5
# Views, absolute on [0, 1] pixels (measured at 64 px: 5e-7; the crop at 224 px reaches 1.5e-5 to 3e-5).
VIEW_ATOL = 1e-5


def _perturb(variables: dict, seed: int) -> dict:
  """Flax variables with non-trivial BatchNorm scales, biases and statistics, so that BN's arithmetic is tested."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in traverse_util.flatten_dict(variables).items():
    if path[-1] in ("scale", "var"):
      leaf = rng.uniform(0.5, 1.5, np.shape(leaf))
    elif path[-1] == "mean" or (path[-1] == "bias" and "bn" in path[-2]):
      leaf = rng.normal(0.0, 0.1, np.shape(leaf))
    out[path] = jnp.asarray(leaf, jnp.float32)
  return traverse_util.unflatten_dict(out)


def _perturb_torch(net, seed: int) -> None:
  """The same for a torch model, in place, and He-normal weights (torch's default makes near-zero logits)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5)
        if module.bias is not None:
          module.bias.normal_(0.0, 0.1)
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)


def _flax_and_torch(arch: str, seed: int = 0):
  """The Flax model, its variables and a torch twin (eval mode) holding the same weights.

  resnet18 and efficientnet_lite0 start in torch (its own initialisation) and go to Flax through the importer
  of ImageNet weights, which checks every name and shape; the others go Flax -> torch.
  """
  model = get_model(arch, NUM_CLASSES, **OPTIONS[arch])
  net = torch_reference.get_model(arch, NUM_CLASSES, **OPTIONS[arch]).eval()
  if arch in pretrained.ARCH_NAMING:
    _perturb_torch(net, seed)
    state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(seed), SIZE))  # all from torch
    return model, pretrained.to_flax(state_dict, arch, shapes, keep_head=True), net
  variables = _perturb(models.init_variables(model, jax.random.key(seed), SIZE), seed)
  torch_reference.load_flax_variables(net, arch, variables)
  return model, variables, net


def _images(n: int = 2) -> np.ndarray:
  return np.random.default_rng(1).uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _flax_logits(model, variables, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))


def _torch_logits(net, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return net(x).numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_logits_match(arch):
  model, variables, net = _flax_and_torch(arch)
  images = _images()
  expected = _flax_logits(model, variables, images)
  logits = _torch_logits(net, images)
  assert np.std(expected) > 0.1  # the comparison is not between near-zero logits
  np.testing.assert_allclose(logits, expected, atol=LOGIT_RTOL * np.abs(expected).max(), rtol=0)


def test_lite0_imagenet_weights_load_into_both():
  state_dict = pretrained.load_state_dict(pretrained.packaged_weights("efficientnet_lite0"))
  net = torch_reference.get_model("efficientnet_lite0", 1000).eval()
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
  model = get_model("efficientnet_lite0", 1000)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), SIZE))
  variables = pretrained.to_flax(state_dict, "efficientnet_lite0", shapes, keep_head=True)
  images = _images()
  expected = _flax_logits(model, variables, images)
  np.testing.assert_allclose(_torch_logits(net, images), expected, atol=LOGIT_RTOL * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("view_a", ["crop", "full"])
def test_views_match(view_a):
  batch = bench_step.make_batch(SIZE, 4, NUM_CLASSES)
  images, boxes = batch["image"].astype(np.float32) / 255.0, batch["bbox"]
  x, z = torch_reference.make_views(view_a, SIZE)(torch.from_numpy(images), torch.from_numpy(boxes))
  for spec, ours in ((view_a, x), (f"{view_a}+lowres", z)):
    expected = np.asarray(degrade.make_view(spec, SIZE)(jnp.asarray(images), jnp.asarray(boxes),
                                                         jax.random.key(0))[0])
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), expected, atol=VIEW_ATOL, rtol=0, err_msg=spec)


def _steps(arch: str, **overrides):
  """A JaxStep and a TorchStep of `arch` on the same weights and batch (constant learning rate, as torch's)."""
  config = bench_step.base_config()
  config.optimizer.update(schedule="constant", **overrides)
  config.kd.weight = 5.0
  config.degrade_params.lowres.low = bench_step.paper_low(SIZE)
  batch = bench_step.make_batch(SIZE, 4, NUM_CLASSES)
  jax_step = bench_step.JaxStep(arch, SIZE, batch, NUM_CLASSES, config, **OPTIONS[arch])
  torch_step = bench_step.TorchStep(arch, SIZE, batch, NUM_CLASSES, jax_step.student_variables,
                                    jax_step.teacher_variables, config, **OPTIONS[arch])
  return jax_step, torch_step


@pytest.mark.parametrize("arch", ARCHS)
def test_cqd_step_loss_matches(arch):
  jax_step, torch_step = _steps(arch)
  np.testing.assert_allclose(torch_step(), jax_step(), rtol=LOSS_RTOL)


def test_cqd_later_steps_match():
  # Later steps are compared on small_cnn only: in train mode (batch statistics) the gradients of the deeper
  # random networks are too sensitive to their inputs for that (1e-6 of noise on the student's view changes
  # Lite0's by 4%, ResNet-18's by 0.3%), and JAX's own eager and jitted steps diverge as much after two updates.
  jax_step, torch_step = _steps("small_cnn", lr=0.05, weight_decay=0.05)
  jax_losses = [jax_step() for _ in range(3)]
  torch_losses = [torch_step() for _ in range(3)]
  assert jax_losses[2] < jax_losses[0] - 0.1  # the updates did change the student
  np.testing.assert_allclose(torch_losses, jax_losses, rtol=LOSS_RTOL)


def test_optimizer_matches_make_optimizer():
  # The update rule alone, on given gradients: momentum, and weight decay on kernels but not on BN or biases.
  config = bench_step.base_config().optimizer
  config.update(schedule="constant", lr=0.1, weight_decay=0.1)
  model = get_model("small_cnn", NUM_CLASSES, widths=(4, 8))
  variables = _perturb(models.init_variables(model, jax.random.key(0), 16), 0)
  params = variables["params"]
  net, teacher = (torch_reference.get_model("small_cnn", NUM_CLASSES, widths=(4, 8)) for _ in range(2))
  torch_reference.load_flax_variables(net, "small_cnn", variables)
  step = torch_reference.CQDStep(net, teacher, view_a="crop", size=16, lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay, temperature=1.0, weight=0.0)
  tx, _ = train.make_optimizer(config, num_steps=10)
  opt_state = tx.init(params)
  torch_params = dict(net.named_parameters())
  rng = np.random.default_rng(0)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    for path, g in traverse_util.flatten_dict(grads).items():
      g = np.array(g)
      torch_params[torch_reference.torch_key("small_cnn", ("params", *path))].grad = torch.from_numpy(
          g.transpose(3, 2, 0, 1) if g.ndim == 4 else g.T)
    step.optimizer.step()
  for path, leaf in traverse_util.flatten_dict(params).items():
    actual = torch_params[torch_reference.torch_key("small_cnn", ("params", *path))].detach().numpy()
    actual = actual.transpose(2, 3, 1, 0) if actual.ndim == 4 else actual.T
    np.testing.assert_allclose(actual, leaf, rtol=1e-6, atol=1e-6, err_msg="/".join(path))
