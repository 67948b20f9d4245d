"""Runs over several processes (TPU pod slices, GPU nodes): starting jax.distributed, and who writes what.

A multi-host run starts this program once per host (or once per GPU). Before any other JAX call, each
process calls `jax.distributed.initialize()`, which connects it to process 0 (the coordinator); from then on
`jax.devices()` lists the devices of all processes and a jitted step runs on all of them. Every process
reads its own part of the data, runs every step and takes part in every Orbax checkpoint save and restore;
process 0 alone writes the workdir's other files (config, results, TensorBoard) and prints.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")


def _count(environ: Mapping[str, str], key: str) -> int:
  try:
    return int(environ.get(key, "1"))
  except ValueError:
    return 1


def detect_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
  """The multi-process launcher whose environment variables say this is one of several processes, or None.

  Reads environment variables only, never the network (JAX's own check for a Cloud TPU VM asks the metadata
  server): JAX_COORDINATOR_ADDRESS; Slurm's srun with more than one task; Open MPI's mpirun with more than one
  rank; a multi-host TPU slice on GKE (TPU_WORKER_HOSTNAMES). The Slurm and Open MPI variables are those
  jax.distributed.initialize() reads to find the coordinator, process count and process id.
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "jax"
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(k in environ for k in slurm) and _count(environ, "SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in environ and _count(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "gke_tpu"
  return None


def initialize(mode: str, *, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed if `mode` asks for it; returns whether it did. Call before any other JAX call.

  "on": always (on a Cloud TPU VM slice JAX finds the coordinator, process count and id itself); "auto": when
  any of the three arguments is given or detect_cluster() finds a launcher; "off": never (a single process).
  Arguments left None are found by JAX from the environment.
  """
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if mode not in MODES:
    raise ValueError(f"--multihost={mode!r} must be one of {', '.join(MODES)}")
  if mode == "off":
    if given:
      raise ValueError(f"--multihost=off contradicts {given[0]}")
    return False
  if mode == "auto" and not given and detect_cluster() is None:
    return False
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (ValueError, TypeError, jax.errors.JaxRuntimeError) as e:  # not found, not accepted, not reached
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"--multihost: jax.distributed.initialize failed ({first}); pass --coordinator_address, "
                     "--num_processes and --process_id, or run under a launcher JAX detects") from None
  return True


def is_primary() -> bool:
  """Whether this is process 0, the one that writes the workdir's files other than checkpoints."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process has reached the barrier `name` (no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[None]:
  """Runs the block in process 0 first and in the others once it is done (e.g. building a data set that
  the others then find built)."""
  if not is_primary():
    sync(name)
  yield
  if is_primary():
    sync(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true in any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
