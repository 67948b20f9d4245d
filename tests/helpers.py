"""Tiny models, batches and configs shared by the train and CLI tests.

Run as a script it trains a few steps of one method on a fixed global batch over all devices (of all
processes, with --coordinator_address, --num_processes and --process_id) and saves the losses and final
variables to an .npz (process i > 0: <out>.<i>.npz), and with --eval_workdir also the evaluation of a tiny data
set; tests/test_multidevice.py runs it (start_steps) with 1 and 8 forced CPU devices and as 2 processes of
4 devices, and compares:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/helpers.py --out=/tmp/p8.npz
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import socket
import subprocess
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


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a global batch (all of it in a single process), as each host's loader
  would give it."""
  import jax
  n = len(batch["label"]) // jax.process_count()
  i = jax.process_index()
  return {k: v[i * n:(i + 1) * n] for k, v in batch.items()}


def train_few_steps(method_name: str, num_steps: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`num_steps` jitted train steps of `method_name` on one fixed global batch, sharded over all devices (each
  process supplies its rows)."""
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
  batch = train.shard_batch(process_rows(tiny_batch(batch_size, seed=seed + 1)), mesh)
  out = {}
  for i in range(num_steps):
    state, metrics = step(state, teacher_vars, batch)
    out[f"loss_{i}"] = np.asarray(metrics["loss"])
  out.update({f"variables{k}": v for k, v in flatten(jax.device_get(state.variables)).items()})
  out["step"] = np.asarray(state.step)
  out["device_count"] = np.asarray(jax.device_count())
  out["process_count"] = np.asarray(jax.process_count())
  out["batch_sharding_devices"] = np.asarray(len(batch["image"].sharding.device_set))
  out["global_batch"] = np.asarray(batch["image"].shape[0])
  return out


def evaluate_tiny(workdir: str, test_per_class: int = 10) -> dict[str, np.ndarray]:
  """Evaluates a fixed model on the tiny demo data set (built in `workdir`) as the experiment does; also
  returns the labels and masks of the global batches the processes assembled."""
  from jax.experimental import multihost_utils
  from cqd_jax import experiment, input_pipeline, train

  config = tiny_experiment_config()
  config.dataset.options.test_per_class = test_per_class
  data = experiment.prepare_data(config, workdir)
  runner = experiment.Runner(config, workdir, data)
  stage = experiment.plan(config)[0]
  acc = runner.evaluate(stage, init_variables(tiny_model(), seed=100), VIEW_B, "test")
  batches = [train.shard_batch(b, runner.mesh) for b in input_pipeline.eval_batches(
      data.builder, "test", batch_size=config.eval_batch_size)]
  gather = lambda key: np.stack([multihost_utils.process_allgather(b[key], tiled=True) for b in batches])
  return {"eval_accuracy_a": np.asarray(acc["accuracy_a"]), "eval_accuracy_b": np.asarray(acc["accuracy_b"]),
          "eval_labels": gather("label"), "eval_mask": gather("mask")}


def process_path(out: str, process_id: int) -> str:
  """Where process `process_id` of the script writes its results: `out` for process 0, else <out>.<id>.npz."""
  return out if process_id == 0 else f"{os.path.splitext(out)[0]}.{process_id}.npz"


def free_port() -> int:
  """A TCP port free on the loopback interface (for a coordinator of processes on this machine)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_COLLECTIVE_PROBE = """
import sys
import jax
import numpy as np
from jax.experimental import multihost_utils
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), initialization_timeout=60)
assert multihost_utils.process_allgather(np.int32(jax.process_index())).tolist() == [0, 1]
"""


@functools.lru_cache(maxsize=None)
def multiprocess_unsupported() -> str | None:
  """None if two JAX processes on 127.0.0.1 can run a collective on this machine's CPU, else why not (for a
  skip reason): the 2-process tests need jax.distributed and CPU collectives (gloo) over the loopback."""
  args = [sys.executable, "-c", _COLLECTIVE_PROBE, f"127.0.0.1:{free_port()}"]
  procs = [subprocess.Popen(args + [str(i)], cwd=REPO, env=subprocess_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
  except subprocess.TimeoutExpired:
    return "two JAX processes on 127.0.0.1 did not finish one CPU collective within 120 s"
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, output in zip(procs, outputs):
    if proc.returncode:
      lines = [l for l in output.splitlines() if "Error" in l] or output.splitlines() or ["no output"]
      return f"two JAX processes on 127.0.0.1 cannot run a CPU collective here: {lines[-1].strip()}"
  return None


def start_steps(out: str, *, num_devices: int, steps: int, batch_size: int, num_processes: int = 1,
                method: str = "cqd", eval_workdir: str | None = None) -> list[subprocess.Popen]:
  """Starts this script as `num_processes` JAX processes (coordinated on 127.0.0.1) of `num_devices` forced CPU
  devices each; their output goes to <out>.<id>.log."""
  args = [sys.executable, os.path.abspath(__file__), f"--out={out}", f"--method={method}", f"--steps={steps}",
          f"--batch_size={batch_size}"]
  args += [f"--eval_workdir={eval_workdir}"] if eval_workdir else []
  if num_processes > 1:
    args += [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={num_processes}"]
  procs = []
  for i in range(num_processes):
    with open(f"{out}.{i}.log", "w") as log:
      procs.append(subprocess.Popen(args + ([f"--process_id={i}"] if num_processes > 1 else []), cwd=REPO,
                                    env=subprocess_env(num_devices), stdout=log, stderr=subprocess.STDOUT))
  return procs


def finish_steps(out: str, procs: list[subprocess.Popen], timeout: float = 300) -> list[dict[str, np.ndarray]]:
  """Waits for start_steps' processes (killing all of them if one fails) and returns each one's results."""
  try:
    for i, proc in enumerate(procs):
      if proc.wait(timeout=timeout) != 0:
        with open(f"{out}.{i}.log") as f:
          raise AssertionError(f"process {i} of {out} exited with {proc.returncode}:\n{f.read()[-3000:]}")
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return [dict(np.load(process_path(out, i))) for i in range(len(procs))]


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True)
  parser.add_argument("--method", default="cqd")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--eval_workdir", default="")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args(argv)
  from cqd_jax import multihost
  multihost.initialize("on" if args.num_processes else "off", coordinator_address=args.coordinator_address,
                       num_processes=args.num_processes, process_id=args.process_id)
  import jax
  out = train_few_steps(args.method, args.steps, args.batch_size)
  if args.eval_workdir:
    out.update(evaluate_tiny(args.eval_workdir))
  np.savez(process_path(args.out, jax.process_index()), **out)


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


if __name__ == "__main__":
  main(sys.argv[1:])
