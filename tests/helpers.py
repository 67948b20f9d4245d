"""Tiny models, batches and configs shared by the train and CLI tests.

Run as a script it trains a few steps of one method on a fixed batch over all (host) devices and saves the
final variables to an .npz; tests/test_train.py runs it with 1 and with 4 forced CPU devices and compares:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/helpers.py --out=/tmp/p4.npz
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
NUM_CLASSES = 4
WIDTHS = (8, 16)
VIEW_A = "crop"
VIEW_B = "crop+lowres"
DEGRADE_PARAMS = {"lowres": {"low": 8}}

# A tiny run of configs/demo.py (one degradation, three methods, a few steps) for `python -m cqd_jax.main`.
CLI_TINY_ARGS = [
    "--config=configs/demo.py:lowres",
    "--config.num_steps=4",
    "--config.log_every=2",
    "--config.checkpoint_every=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    f"--config.dataset.options.num_classes={NUM_CLASSES}",
    "--config.dataset.options.train_per_class=8",
    "--config.dataset.options.validation_per_class=2",
    "--config.dataset.options.test_per_class=5",
    "--config.model.options.widths=(8,16)",
    "--config.methods=('train_a','train_b','cqd')",
    "--config.progress_bar=False",
]
CLI_METHODS = ("train_a", "train_b", "cqd")


def subprocess_env(num_devices: int | None = None) -> dict[str, str]:
  """The current environment on CPU, with `num_devices` forced host devices (None: XLA_FLAGS unset)."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  if num_devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def tiny_batch(n: int, seed: int = 0, size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
  """Random uint8 images with random valid boxes (ymin, xmin, ymax, xmax) and labels."""
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0.0, 0.4, (n, 2))
  hi = lo + rng.uniform(0.3, 0.6, (n, 2))
  boxes = np.concatenate([lo, np.minimum(hi, 1.0)], axis=1).astype(np.float32)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "label": rng.integers(0, num_classes, (n,), dtype=np.int32),
          "bbox": boxes}


def tiny_model(num_classes: int = NUM_CLASSES):
  from cqd_jax import models
  return models.get_model("small_cnn", num_classes, widths=WIDTHS)


def optimizer_config(**overrides: Any):
  import ml_collections
  opt = dict(name="sgd", lr=0.05, end_lr=0.0025, schedule="constant", warmup_steps=0, momentum=0.9,
             nesterov=False, weight_decay=5e-4)
  opt.update(overrides)
  return ml_collections.ConfigDict(opt)


def distill_config(**overrides: Any):
  import ml_collections
  distill = dict(loss="soft_ce", temperature=4.0, weight=10.0, t2_scale=False)
  distill.update(overrides)
  return ml_collections.ConfigDict(distill)


def views():
  from cqd_jax import degrade
  return (degrade.make_view(VIEW_A, IMAGE_SIZE),
          degrade.make_view(VIEW_B, IMAGE_SIZE, DEGRADE_PARAMS))


def init_variables(model, seed: int) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  return model.init(jax.random.key(seed), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32), train=False)


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """{path: numpy array} of a pytree, for .npz files and comparisons."""
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def train_few_steps(method_name: str, num_steps: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`num_steps` jitted train steps of `method_name` on one fixed batch, sharded over all devices."""
  import jax
  from cqd_jax import methods, train

  train.check_batch_size(batch_size)
  method = methods.get_method(method_name)
  model = tiny_model()
  teacher = init_variables(model, seed + 100) if method.needs_teacher else None
  tx, _ = train.make_optimizer(optimizer_config(), num_steps)
  state = train.create_train_state(model, jax.random.key(seed), IMAGE_SIZE, tx,
                                   teacher if method.init_from_teacher else None, step_rng=jax.random.key(seed + 2))
  mesh = train.data_mesh()
  view_a, view_b = views()
  step = train.jit_train_step(mesh, method=method, view_a=view_a, view_b=view_b,
                              teacher_apply=model.apply if method.distill else None, distill=distill_config(),
                              flip=True)
  state = train.replicate(state, mesh)
  teacher_vars = train.replicate(teacher, mesh) if method.distill else None
  batch = train.shard_batch(tiny_batch(batch_size, seed=seed + 1), mesh)
  out = {}
  for i in range(num_steps):
    state, metrics = step(state, teacher_vars, batch)
    out[f"loss_{i}"] = np.asarray(metrics["loss"])
  out.update({f"variables{k}": v for k, v in flatten(jax.device_get(state.variables)).items()})
  out["step"] = np.asarray(state.step)
  out["device_count"] = np.asarray(jax.device_count())
  out["batch_sharding_devices"] = np.asarray(len(batch["image"].sharding.device_set))
  return out


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True)
  parser.add_argument("--method", default="cqd")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args(argv)
  np.savez(args.out, **train_few_steps(args.method, args.steps, args.batch_size))


if __name__ == "__main__":
  main(sys.argv[1:])


def tiny_experiment_config():
  """configs/demo.py:lowres shrunk to seconds (4 steps, 4 classes, a 2-layer CNN), for in-process runs."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("lowres")
  config.num_steps = 4
  config.checkpoint_every = 2
  config.log_every = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.progress_bar = False
  config.dataset.options = dict(num_classes=4, image_size=32, train_per_class=5, validation_per_class=1,
                                test_per_class=2, seed=0)
  config.model.options.widths = WIDTHS
  return config


def cli_tiny_args(*overrides: str) -> list[str]:
  """CLI_TINY_ARGS with `overrides` (`--config.key=value`) replacing the same keys; needed because
  ml_collections appends (rather than replaces) a repeated tuple flag such as --config.methods."""
  keys = {o.split("=", 1)[0] for o in overrides}
  return [a for a in CLI_TINY_ARGS if a.split("=", 1)[0] not in keys] + list(overrides)


FULL_DISK_ROOM = 10  # Bytes a "full disk" still takes before a write fails.


class FullDiskFile:
  """A file opened for writing on a disk with FULL_DISK_ROOM bytes left: the first write stores those and fails."""

  def __init__(self, f):
    self.f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.f.close()

  def write(self, data):
    self.f.write(data[:FULL_DISK_ROOM])
    self.f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
