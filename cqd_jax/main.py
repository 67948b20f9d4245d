"""Command line: `python -m cqd_jax.main --config=configs/demo.py --workdir=/tmp/cqd`.

Trains every stage the config describes (resuming those already started in the workdir), prints the
results table and writes it to the workdir. Errors in the config, the data or the workdir are reported as
one line naming the culprit; `--verbose` shows the traceback instead.

Several processes (a TPU pod slice, GPU nodes; docs/scaling.md) run the same command, each with
--multihost=on or under a launcher that --multihost=auto detects (Slurm, Open MPI, GKE), or with
--coordinator_address, --num_processes and --process_id; process 0 writes the files and prints the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import textwrap
from typing import Any, Callable, Iterator

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from cqd_jax import checkpoint
from cqd_jax import config_lib
from cqd_jax import fileio
from cqd_jax import multihost

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py[:arg]; the shipped ones work from any directory).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, logs and results.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks and debug logs.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                         "Resume a workdir even though result-changing config keys differ.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", multihost.MODES,
    "Start jax.distributed (one process per host): on, off, or auto (when a launcher's environment variables "
    "say there are several processes, or when one of the next three flags is given).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for jax.distributed (default: found by JAX).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (default: found by JAX).",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1 (default: found "
                                   "by JAX).", lower_bound=0)
flags.mark_flags_as_required(["config", "workdir"])
def catalogue() -> str:
  """What --config can name, for --help: the configs shipped beside the package, the methods and the
  degradation ops (composed with '+' in config.degradations)."""
  from cqd_jax import degrade, methods  # pylint: disable=g-import-not-at-top (JAX-heavy)

  shipped = sorted(f for f in os.listdir(config_lib.CONFIGS) if f.endswith(".py") and not f.startswith("_"))
  lines = ["", "Configs (--config=configs/<name>.py[:arg], from any directory; each file's docstring gives its "
           "commands):",
           textwrap.fill(", ".join(f[:-3] for f in shipped) or f"none found in {config_lib.CONFIGS}", 110,
                         initial_indent="  ", subsequent_indent="  "),
           "Methods (config.methods):"]
  lines += [f"  {name:<24s}{m.description}" for name, m in methods.METHODS.items()]
  lines += ["Degradation ops (config.degradations.<name>.a / .b, e.g. 'crop+lowres'):",
            textwrap.fill(", ".join(sorted({*degrade.OPS, *degrade.NETWORK_OPS})), 110, initial_indent="  ",
                          subsequent_indent="  ")]
  return "\n".join(lines)


__doc__ += catalogue()  # absl prints the main module's docstring with --help

# What a user can cause with a config, a data set or a workdir; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, config_lib.ConfigError, checkpoint.CheckpointError,
               checkpoint.NonFiniteError, fileio.WorkdirBusy)


def one_line(e: BaseException) -> str:
  """An error message on one line (ml_collections' messages span several)."""
  return " ".join(str(e).split())


def _flag_error(e: BaseException, argv: list[str]) -> str:
  """One line naming the flag for an error raised while parsing flags (some embed a config's traceback)."""
  if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override names a key the config lacks
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(message))
      e = e.args[0]
    first, *hint = str(e.args[0] if e.args else e).splitlines()
    key = first.strip("'\"")
    paths = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
    path = next((p for p in paths if key in p.split(".")), "config")
    return " ".join([f"--{path}: the config has no key {key!r}", *hint])
  lines = [l.strip() for l in str(e).splitlines() if l.strip() and not l.strip().startswith("Pass --help")]
  if any(l.startswith("Traceback") for l in lines):  # the config file raised: keep its exception's line
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with errors as one `error: ...` line (the traceback with --verbose)."""
  try:
    return flags.FLAGS(config_lib.resolve_config(argv))
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    if any(a.split("=")[0] in ("--verbose", "-verbose") for a in argv[1:]):
      raise
    print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(1)


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir and checks that it is writable, so a bad path fails before any training."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")  # hosts may share it
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"--workdir {workdir} is not writable: {e.strerror or e}") from None
  return workdir


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """fileio.workdir_lock held by process 0 for the block; when it is busy, every process raises (the others
  would otherwise wait for process 0 in their first collective)."""
  with contextlib.ExitStack() as stack:
    busy = None
    if multihost.is_primary():
      try:
        stack.enter_context(fileio.workdir_lock(workdir))
      except fileio.WorkdirBusy as e:
        busy = e
    if multihost.any_process(busy is not None):
      raise busy or fileio.WorkdirBusy(f"--workdir {workdir} is in use by another run (process 0 says)")
    yield


def run_command(body: Callable[[ml_collections.ConfigDict, str], None],
                check: Callable[[ml_collections.ConfigDict], Any] | None = None) -> None:
  """What every command does around its `body(config, workdir)`: starts jax.distributed if asked, validates
  the config (and runs the command's own `check` of its flags against it) before the workdir is touched,
  checks the workdir and its stored config, holds the workdir's lock (one run per workdir), and turns user
  errors into one `error:` line (SystemExit(1)) and a preemption into SystemExit(128 + the signal number),
  with its checkpoint saved."""
  logging.set_verbosity(logging.DEBUG if _VERBOSE.value else logging.WARNING)
  try:
    multihost.initialize(_MULTIHOST.value, coordinator_address=_COORDINATOR.value,
                         num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)  # before any JAX call
    config = _CONFIG.value
    if config.get("plugins"):  # stored absolute in config.json, so that later commands find them from anywhere
      config.plugins = tuple(os.path.abspath(os.path.expanduser(p)) if p.endswith(".py") else p
                             for p in config.plugins)
    config_lib.validate(config)
    if check is not None:
      check(config)
    workdir = prepare_workdir(_WORKDIR.value)
    with workdir_lock(workdir):
      config_lib.save(config, workdir, allow_changes=_ALLOW_CONFIG_CHANGE.value, write=multihost.is_primary())
      body(config, workdir)
  except checkpoint.Preempted as e:
    print(str(e), file=sys.stderr)
    raise SystemExit(128 + e.signum) from None  # the shell convention for "killed by this signal"
  except USER_ERRORS as e:
    if _VERBOSE.value:
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    raise SystemExit(1) from None


def _train_and_report(config: ml_collections.ConfigDict, workdir: str) -> None:
  from cqd_jax import experiment  # Imported late: loads JAX and TFDS, which take a second or two.
  from cqd_jax import results
  rows = experiment.run(config, workdir)
  if not multihost.is_primary():
    return
  print("\nTop-1 accuracy (%) on the test split:\n")
  print(results.markdown(rows, list(config.degradations), list(config.methods)))
  if config.get("compare"):
    with open(os.path.join(workdir, "comparison.md")) as f:
      print(f.read())
  print(f"Tables: {os.path.join(workdir, 'results.md')} and results.csv"
        + (", comparison.md and comparison.csv" if config.get("compare") else "")
        + f"; TensorBoard: {workdir}/tensorboard")
  logging.info("results: %s", json.dumps(rows))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run_command(_train_and_report)


def run(entry: Callable[[list[str]], None] = main) -> None:
  """Entry point of the `cqd-jax` console script (and, with its `main`, of `cqd_jax.tune`)."""
  checkpoint.exit_at_once_on_failure(lambda: app.run(entry, flags_parser=parse_flags))


if __name__ == "__main__":
  run()
