"""Tiny models, batches, configs and runs shared by the tests, and the skips they may make.

Run as a script it trains a few steps of one method on a fixed global batch over all devices (of all
processes, with --coordinator_address, --num_processes and --process_id) and saves the losses and final
variables to an .npz (process i > 0: <out>.<i>.npz), and with --eval_workdir also the evaluation of a tiny data
set; tests/test_multidevice.py runs it (start_steps) with 8 forced CPU devices and as 2 processes of 4
devices, and compares them with the same steps run in the test process on 1 device:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/helpers.py --out=/tmp/p8.npz
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

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


# The only reasons a test may skip (conftest.py fails any other skip); reasons start with one of these.
NO_TORCH = "torch is not installed"
NO_SHARED_DATA = "the real data samples in ../shared/data are absent"
AS_ROOT = "root can write anyway"
ALLOWED_SKIPS = (NO_TORCH, NO_SHARED_DATA, AS_ROOT)
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


def require_torch():
  """torch, or a skip (allowed: torch is an optional extra)."""
  import pytest
  try:
    import torch
  except ImportError:
    pytest.skip(NO_TORCH)
  return torch


def require_shared_data(*parts: str) -> pathlib.Path:
  """A path under ../shared/data, or a skip (allowed) when it is absent."""
  import pytest
  path = pathlib.Path(SHARED_DATA, *parts)
  if not path.exists():
    pytest.skip(f"{NO_SHARED_DATA} ({path})")
  return path


def subprocess_env(num_devices: int | None = None) -> dict[str, str]:
  """The current environment on CPU (with conftest.py's compilation settings), with `num_devices` forced host
  devices (None: XLA_FLAGS unset)."""
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


def kd_config(**overrides: Any):
  """Options of the KD term (config.kd) for the tiny steps."""
  import ml_collections
  kd = dict(loss="soft_ce", temperature=4.0, weight=10.0, t2_scale=False)
  kd.update(overrides)
  return ml_collections.ConfigDict(kd)


def tiny_step(method, mesh, *, model=None, **static):
  """The jitted step of `method` for the tiny model, views and KD options (static: flip, crop_margin, ...)."""
  from cqd_jax import train
  view_a, view_b = views()
  static.setdefault("kd", kd_config())
  return train.jit_one_model_step(mesh, method, model=model or tiny_model(), view_a=view_a, view_b=view_b,
                                  image_size=IMAGE_SIZE, **static)


def views():
  from cqd_jax import degrade
  return (degrade.make_view(VIEW_A, IMAGE_SIZE),
          degrade.make_view(VIEW_B, IMAGE_SIZE, DEGRADE_PARAMS))


def init_variables(model, seed: int) -> dict[str, Any]:
  import jax
  from cqd_jax import models
  return models.init_variables(model, jax.random.key(seed), IMAGE_SIZE)


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
  init_from = method.stream(method.student).source
  teacher = init_variables(model, seed + 100) if method.sources else None
  tx, _ = train.make_optimizer(optimizer_config(), num_steps)
  state = train.create_train_state(model, jax.random.key(seed), IMAGE_SIZE, tx,
                                   teacher if init_from else None, step_rng=jax.random.key(seed + 2))
  mesh = train.data_mesh()
  step = tiny_step(method, mesh, model=model, flip=True)
  state = train.replicate(state, mesh)
  teacher_vars = train.replicate({n: teacher for n in method.frozen}, mesh)
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
  config.eval_batch_size = 16  # 40 test images: the last batch is padded
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
  """The config that CLI_TINY_ARGS makes of configs/demo.py:lowres, for in-process runs (test_teacher_cache
  checks that the two agree)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("lowres")
  config.num_steps = 4
  config.log_every = 2
  config.checkpoint_every = 2
  config.batch_size = 16
  config.eval_batch_size = 40
  config.dataset.options.update(num_classes=NUM_CLASSES, train_per_class=8, validation_per_class=2,
                                test_per_class=5)
  config.model.options.widths = WIDTHS
  config.methods = CLI_METHODS
  config.progress_bar = False
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


# ------------------------------------------------------------------------------ the command line, in-process

@dataclasses.dataclass
class CliResult:
  """What a run of the command line gave: its exit status and what it printed."""

  returncode: int
  stdout: str
  stderr: str


def run_cli_in_process(args: list[str], entry: Callable[[list[str]], None] | None = None) -> CliResult:
  """Runs `python -m cqd_jax.main args` (or `entry`, e.g. cqd_jax.tune.main) in this process: the flags are
  parsed by the command line's own parser and `entry` runs as app.run runs it, so the `error:` line and the
  exit status are what a user sees (cqd_jax.main.run then leaves with that status). Flags are reset after."""
  from absl import flags
  from cqd_jax import main as cli
  entry = entry or cli.main
  argv = ["cqd_jax.main", *args]
  stdout, stderr = io.StringIO(), io.StringIO()
  saved_argv, saved_cwd = sys.argv, os.getcwd()
  _reset_flags()
  sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
  os.chdir(REPO)  # config paths are relative to the repository, as in the README
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        entry(cli.parse_flags(argv))
        code = 0
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = saved_argv
    os.chdir(saved_cwd)
    _reset_flags()
    flags.FLAGS.mark_as_parsed()
  return CliResult(code, stdout.getvalue(), stderr.getvalue())


def _reset_flags() -> None:
  """Every flag back to its default, and the per-run --config.* override flags gone."""
  from absl import flags
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)


def error_line(result: CliResult | subprocess.CompletedProcess) -> str:
  """The single `error: ...` line of a failed run's stderr, checked to be a one-liner without a traceback."""
  assert result.returncode != 0, f"expected a failure\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, f"expected one 'error:' line in stderr:\n{result.stderr[-4000:]}"
  return lines[0]


def run_cli(workdir, *extra: str, base: bool = True, num_devices: int | None = None,
            main: tuple[str, ...] = ("-m", "cqd_jax.main"), timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs the command line as a user does, in a subprocess (`main`: how python starts it) on `num_devices`
  forced CPU devices, with the tiny config unless `base` is False."""
  args = [sys.executable, *main, f"--workdir={workdir}", *(CLI_TINY_ARGS if base else []), *extra]
  return subprocess.run(args, cwd=REPO, env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)


def signal_itself_script(step: int) -> str:
  """A `python -c` script that runs the command line and, once step `step` is done and a checkpoint is
  complete on disk, sends itself signals. Its first argument: the signal numbers (comma-separated); its second:
  the checkpoint directory to wait for (Orbax renames a step's directory to its number when complete)."""
  return f"""
import os, sys, time
from cqd_jax import experiment, main
signals = [int(s) for s in sys.argv.pop(1).split(",")]
checkpoint = sys.argv.pop(1)
stop_requested = experiment._stop_requested

def signal_at_step(received, done, config, *rest):
  if done == {step}:
    while not os.path.isdir(checkpoint):
      time.sleep(0.01)
    for signum in signals:
      os.kill(os.getpid(), signum)
  return stop_requested(received, done, config, *rest)

experiment._stop_requested = signal_at_step
main.run()
"""


@dataclasses.dataclass
class TinyRun:
  """A finished run of the tiny config: its workdir, what the command printed, and the train-step and
  evaluation functions it compiled (jax.jit objects, in creation order)."""

  workdir: pathlib.Path
  result: CliResult
  train_steps: list[Any]
  eval_steps: list[Any]


STAGES = ("train_a@crop", "lowres__train_b", "lowres__cqd")  # the tiny run's stage directories, in run order


@contextlib.contextmanager
def recording_compiles() -> Iterator[tuple[list[Any], list[Any]]]:
  """Records the jitted train steps and evaluations that cqd_jax.train makes while the block runs."""
  from cqd_jax import train
  made = ([], [])
  originals = train.jit_train_step, train.jit_eval_step

  def recorder(make, out):
    def wrapper(*args, **kwargs):
      fn = make(*args, **kwargs)
      out.append(fn)
      return fn
    return wrapper

  train.jit_train_step, train.jit_eval_step = recorder(originals[0], made[0]), recorder(originals[1], made[1])
  try:
    yield made
  finally:
    train.jit_train_step, train.jit_eval_step = originals


def finished_tiny_run(workdir: pathlib.Path) -> TinyRun:
  """Runs the tiny config to the end in `workdir` (see conftest.tiny_run)."""
  with recording_compiles() as (train_steps, eval_steps):
    result = run_cli_in_process([f"--workdir={workdir}", *CLI_TINY_ARGS])
  assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
  return TinyRun(workdir, result, train_steps, eval_steps)


def copy_run(run: TinyRun | pathlib.Path, to: pathlib.Path, *, drop: tuple[str, ...] = ()) -> pathlib.Path:
  """A copy of a finished run's workdir (or of the workdir `run`) at `to`, without the stage directories
  `drop` (which a command run on the copy then trains again); returns the copy's path."""
  shutil.copytree(run.workdir if isinstance(run, TinyRun) else run, to, symlinks=True)
  for stage in drop:
    shutil.rmtree(to / "stages" / stage)
  return to


if __name__ == "__main__":
  main(sys.argv[1:])
