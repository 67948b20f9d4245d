"""Multi-host runs: when jax.distributed starts, how data is split over processes, and a real 2-process run of
`python -m cqd_jax.main` on 127.0.0.1 (who writes what, per-process data shards, checkpoints, resuming).

The 2-process runs need jax.distributed and CPU collectives (gloo) over the loopback; they never skip.
"""

import csv
import json
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

import helpers
from cqd_jax import experiment, input_pipeline, multihost
from cqd_jax.data import registry

TIMEOUT = 300
OPTIONS = dict(num_classes=4, image_size=32, train_per_class=3, validation_per_class=2, test_per_class=5)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  return registry.prepare("cqd_synthetic", str(tmp_path_factory.mktemp("data")), **OPTIONS)


# ------------------------------------------------------------------------------------- jax.distributed start

@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "jax"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
      "SLURM_LOCALID": "0"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0"}, None),  # a single srun task
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # inside salloc, not srun
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}, "ompi"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, "gke_tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t-0"}, None),
])
def test_detect_cluster_reads_the_launchers_variables(environ, expected):
  assert multihost.detect_cluster(environ) == expected


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize calls instead of connecting anywhere."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: recorded.append(args))
  return recorded


def test_initialize_auto_without_a_launcher_stays_single_process(calls, monkeypatch):
  monkeypatch.setattr(multihost, "detect_cluster", lambda: None)
  assert not multihost.initialize("auto")
  assert not multihost.initialize("off")
  assert calls == []


def test_initialize_auto_under_a_launcher_or_with_flags(calls, monkeypatch):
  monkeypatch.setattr(multihost, "detect_cluster", lambda: "slurm")
  assert multihost.initialize("auto")
  monkeypatch.setattr(multihost, "detect_cluster", lambda: None)
  assert multihost.initialize("auto", coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
  assert multihost.initialize("on")
  assert calls == [(None, None, None), ("10.0.0.1:1234", 4, 3), (None, None, None)]


def test_initialize_errors_name_the_flag(calls, monkeypatch):
  with pytest.raises(ValueError, match="--multihost=off contradicts --process_id"):
    multihost.initialize("off", process_id=1)

  def fail(*args):
    raise ValueError("coordinator_address should be defined.")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(ValueError, match=r"^--multihost: jax.distributed.initialize failed \(coordinator_address "
                                       r"should be defined.\); pass --coordinator_address"):
    multihost.initialize("on")


@pytest.mark.slow
def test_cli_multihost_on_without_a_cluster_is_one_line_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cqd_jax.main", "--config=configs/demo.py",
                           f"--workdir={tmp_path}", "--multihost=on"], cwd=helpers.REPO,
                          env=helpers.subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: --multihost: jax.distributed.initialize failed")


# ------------------------------------------------------------------------------------------------ data split

def test_train_loader_shards_are_disjoint_per_process_batches(builder):
  """Each process's loader gives batch_size / process_count examples from its own records."""
  seen = []
  for index in range(2):
    loader = input_pipeline.train_loader(builder, "train", batch_size=3, seed=0,
                                         shard_options=grain.sharding.ShardOptions(index, 2, drop_remainder=True))
    batches = [next(it) for it in [iter(loader)] for _ in range(2)]  # one epoch of the shard's 6 records
    assert all(b["image"].shape[0] == 3 for b in batches)
    seen.append({(int(l), tuple(b)) for batch in batches for l, b in zip(batch["label"], batch["bbox"])})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12


def test_runner_gives_each_process_its_share_of_the_batch(monkeypatch, tmp_path):
  """Runner.train builds the loader for batch_size / process_count (shard_batch puts the shares together)."""
  config = helpers.tiny_experiment_config()
  data = experiment.prepare_data(config, str(tmp_path))
  runner = experiment.Runner(config, str(tmp_path), data)
  asked = {}

  class Stop(Exception):
    pass

  def loader(*args, batch_size, **kwargs):
    asked["batch_size"] = batch_size
    raise Stop
  monkeypatch.setattr(input_pipeline, "train_loader", loader)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(Stop):
    runner.train(experiment.plan(config)[0], {})
  assert asked["batch_size"] == config.batch_size // 2


@pytest.mark.parametrize("count,batch_size", [(2, 4), (2, 8), (4, 8)])
def test_eval_batch_shards_put_together_are_the_single_process_batches(builder, count, batch_size):
  whole = list(input_pipeline.eval_batches(builder, "test", batch_size=batch_size))
  shards = [list(input_pipeline.eval_batches(builder, "test", batch_size=batch_size,
                                              shard_options=grain.sharding.ShardOptions(i, count)))
            for i in range(count)]
  assert all(len(s) == len(whole) for s in shards)  # every process takes part in every step
  for i, batch in enumerate(whole):
    for k in batch:
      np.testing.assert_array_equal(np.concatenate([s[i][k] for s in shards]), batch[k], err_msg=k)
  assert sum(int(b["mask"].sum()) for s in shards for b in s) == 20


def test_eval_batch_size_must_split_over_processes(builder):
  with pytest.raises(ValueError, match=r"eval batch size 6 must be a positive multiple of the shard \(process\) "
                                       r"count \(4\)"):
    next(input_pipeline.eval_batches(builder, "test", batch_size=6, shard_options=grain.sharding.ShardOptions(0, 4)))


def test_stop_requests_are_shared_at_log_steps_only(monkeypatch):
  """In a multi-process run every process must stop after the same step: a signal to one is shared (by a
  collective) every log_every steps; a single process stops at once."""
  config = helpers.tiny_experiment_config()  # log_every=2, num_steps=4
  shared = []
  monkeypatch.setattr(multihost, "any_process", lambda flag: shared.append(flag) or True)
  assert experiment._stop_requested([15], 1, config, 4)  # one process: at once
  assert not experiment._stop_requested([], 1, config, 4) and shared == []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert not experiment._stop_requested([15], 1, config, 4) and shared == []  # not a log step: no collective
  assert experiment._stop_requested([], 2, config, 4) and shared == [False]  # another process got the signal
  assert experiment._stop_requested([15], 4, config, 4) and shared == [False, True]


# ---------------------------------------------------------------------------------------- 2 processes, CLI

def run_processes(workdir, num_processes: int = 2, *extra: str) -> list[tuple[int, str, str]]:
  """`python -m cqd_jax.main` on the tiny config as `num_processes` processes of 2 CPU devices each (jax.distributed
  on 127.0.0.1); returns each process's (exit code, stdout, stderr)."""
  args = [sys.executable, "-m", "cqd_jax.main", f"--workdir={workdir}", *helpers.CLI_TINY_ARGS, *extra]
  if num_processes > 1:
    args += [f"--coordinator_address=127.0.0.1:{helpers.free_port()}", f"--num_processes={num_processes}"]
  procs, logs = [], []
  for i in range(num_processes):
    logs.append((open(f"{workdir}.{i}.out", "w+"), open(f"{workdir}.{i}.err", "w+")))
    procs.append(subprocess.Popen(args + ([f"--process_id={i}"] if num_processes > 1 else []), cwd=helpers.REPO,
                                  env=helpers.subprocess_env(2), stdout=logs[-1][0], stderr=logs[-1][1]))
  out = []
  try:
    for proc, (stdout, stderr) in zip(procs, logs):
      proc.wait(timeout=TIMEOUT)
      stdout.seek(0)
      stderr.seek(0)
      out.append((proc.returncode, stdout.read(), stderr.read()))
  finally:
    for proc, files in zip(procs, logs):
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      for f in files:
        f.close()
  return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("multihost") / "work"
  runs = run_processes(workdir)
  for i, (code, stdout, stderr) in enumerate(runs):
    assert code == 0, f"process {i}:\nstdout:\n{stdout}\nstderr:\n{stderr[-6000:]}"
  return workdir, runs


@pytest.mark.slow
def test_two_processes_write_once_and_print_once(two_process_run):
  workdir, ((_, out0, err0), (_, out1, err1)) = two_process_run
  assert "Top-1 accuracy (%) on the test split" in out0 and "Top-1" not in out1
  assert "stage lowres/cqd" in err0 and "stage " not in err1  # progress lines: process 0's only
  with open(workdir / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == list(helpers.CLI_METHODS)
  assert (workdir / "config.json").is_file() and (workdir / "results.md").is_file()
  stages = sorted(p.name for p in (workdir / "stages").iterdir())
  assert len(stages) == 3
  for stage in stages:
    assert (workdir / "stages" / stage / "result.json").is_file()
    assert len(list((workdir / "tensorboard" / stage).iterdir())) == 1  # one event file: process 0's


@pytest.mark.slow
def test_two_processes_read_their_own_shards(two_process_run):
  """Each checkpoint holds both processes' data positions. With a global batch of 16, each process read 8
  records per step from its own shard: after 4 steps process i's last record has global sampler index
  i + 2 * 31 (the shards interleave), where a per-process batch of 16 would have reached i + 2 * 63."""
  workdir, _ = two_process_run
  for stage in (workdir / "stages").iterdir():
    data = stage / "checkpoints" / "4" / "data"
    assert sorted(p.name for p in data.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]
    for i in range(2):
      position = json.loads((data / f"process_{i}-of-2.json").read_text())
      assert position["last_seen_indices"] == {"0": i + 2 * 31}
      assert f"shard_index={i}, shard_count=2" in position["sampler"]


@pytest.mark.slow
def test_two_processes_resume_from_their_checkpoints(two_process_run):
  """Without its result.json the cqd stage restores its last checkpoint (state and both data iterators, the
  teacher's too) on both processes and evaluates it again to the same numbers; one process cannot resume it."""
  workdir, _ = two_process_run
  result = workdir / "stages" / "lowres__cqd" / "result.json"
  before = json.loads(result.read_text())
  result.unlink()
  runs = run_processes(workdir)
  for i, (code, stdout, stderr) in enumerate(runs):
    assert code == 0, f"process {i}:\nstdout:\n{stdout}\nstderr:\n{stderr[-6000:]}"
  assert "stage lowres/cqd: resuming from step 4" in runs[0][2]
  assert json.loads(result.read_text()) == before
  result.unlink()
  one = helpers.run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])  # this process: 1 of 1
  assert one.returncode == 1
  assert "was written by 2 processes and this run has 1: resume it with 2 processes" in helpers.error_line(one)
