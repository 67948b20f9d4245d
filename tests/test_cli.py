"""End-to-end tests of `python -m cqd_jax.main` on a tiny config: results, resuming, and one-line errors.

One finished workdir (three stages of 4 steps on 4 classes) is shared by the tests through a module fixture;
the error cases fail during validation, before any training, so they cost only the interpreter start-up.
"""

import csv
import os
import shutil
import subprocess
import sys
import time

import pytest

import helpers

TIMEOUT = 300


def run_cli(workdir, *extra: str, base: bool = True, num_devices: int | None = None,
            main: tuple[str, ...] = ("-m", "cqd_jax.main")) -> subprocess.CompletedProcess:
  """Runs the command line (`main`: how python starts it) on `num_devices` forced CPU devices."""
  args = [sys.executable, *main, f"--workdir={workdir}"]
  args += helpers.CLI_TINY_ARGS if base else []
  args += list(extra)
  return subprocess.run(args, cwd=helpers.REPO, env=helpers.subprocess_env(num_devices), capture_output=True,
                        text=True, timeout=TIMEOUT)


def error_line(result: subprocess.CompletedProcess) -> str:
  """The single `error: ...` line of a failed run's stderr, checked to be a one-liner without a traceback."""
  assert result.returncode != 0, f"expected a failure\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, f"expected one 'error:' line in stderr:\n{result.stderr[-4000:]}"
  return lines[0]


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir where the tiny config ran to the end, with the result of that run and its wall time."""
  workdir = tmp_path_factory.mktemp("cli") / "work"
  t0 = time.time()
  result = run_cli(workdir)
  elapsed = time.time() - t0
  assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
  return workdir, result, elapsed


def test_end_to_end_writes_results(finished):
  workdir, result, _ = finished
  assert "Traceback" not in result.stderr
  # The Markdown table on stdout: header, separator, train_a on A and on B, then the other methods.
  assert "| method | test | lowres |" in result.stdout
  assert "|---|---|---|" in result.stdout
  for method, test in (("train_a", "A"), ("train_a", "B"), ("train_b", "B"), ("cqd", "B")):
    assert f"| {method} | {test} | " in result.stdout, result.stdout
  for name in ("results.csv", "results.md", "config.json"):
    assert (workdir / name).is_file(), name
  assert "| method | test | lowres |" in (workdir / "results.md").read_text()
  rows = read_csv(workdir / "results.csv")
  assert sorted((r["degradation"], r["method"]) for r in rows) == sorted(("lowres", m) for m in helpers.CLI_METHODS)
  for r in rows:
    for key in ("accuracy_a", "accuracy_b"):
      assert 0.0 <= float(r[key]) <= 1.0
      # 4 classes x 5 test images: every accuracy is a multiple of 1/20.
      assert abs(float(r[key]) * 20 - round(float(r[key]) * 20)) < 1e-4
  for stage in ("train_a@crop", "lowres__train_b", "lowres__cqd"):
    assert (workdir / "stages" / stage / "result.json").is_file(), stage
    assert (workdir / "stages" / stage / "checkpoints" / "4").is_dir(), stage


def test_overrides_reached_the_config(finished):
  import json
  workdir, _, _ = finished
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["options"]["widths"] == [8, 16]
  assert config["methods"] == list(helpers.CLI_METHODS)
  assert config["num_steps"] == 4 and config["batch_size"] == 16
  assert list(config["degradations"]) == ["lowres"]
  assert config["dataset"]["options"]["num_classes"] == 4


def test_rerun_skips_finished_stages(finished):
  workdir, _, first_elapsed = finished
  before = (workdir / "results.csv").read_bytes()
  t0 = time.time()
  result = run_cli(workdir)
  elapsed = time.time() - t0
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("finished earlier, skipping") == 3, result.stderr
  assert " steps in " not in result.stderr, "a finished stage was trained again"
  assert (workdir / "results.csv").read_bytes() == before
  assert "| cqd | B | " in result.stdout
  assert elapsed < first_elapsed, (elapsed, first_elapsed)


# ----------------------------------------------------------------------------------------- one-line errors

def assert_nothing_written(workdir) -> None:
  """A config refused before any work leaves no config.json (a corrected re-run would be refused as a changed
  config), no data set and no stages."""
  for name in ("config.json", "data", "stages"):
    assert not (workdir / name).exists(), name


@pytest.mark.parametrize("override,culprits", [
    ("--config.methods=('nope',)", ["methods", "nope"]),
    ("--config.degradations.lowres.b=crop+blurry", ["degradations.lowres.b", "blurry"]),
    ("--config.optimizer.lr=-1", ["optimizer.lr"]),
    ("--config.optimizer.lr=inf", ["optimizer.lr=inf", "finite"]),
    ("--config.model.name=no_such_net", ["model", "no_such_net"]),
    ("--config.batch_size=0", ["batch_size"]),
    ("--config.batch_size=-8", ["batch_size=-8", "> 0"]),
    ("--config.distill.loss=kl_x", ["distill.loss", "kl_x"]),
    ("--config.distill.temperature=-1", ["distill.temperature=-1", "> 0"]),
    ("--config.distill.temperature=0", ["distill.temperature=0", "> 0"]),
    ("--config.distill.weight=-5", ["distill.weight=-5", ">= 0"]),
    ("--config.distill.weight=nan", ["distill.weight=nan", "finite"]),
    ("--config.dataset.name=nope", ["dataset.name", "nope", "cqd_synthetic"]),
    ("--config.dataset.options.test_per_class=0", ["dataset.options", "test_per_class", ">= 1"]),
    ("--config.eval_split=nope", ["eval_split", "'nope'", "available: train, validation, test"]),
    ("--config.compute_dtype=float8", ["compute_dtype='float8'", "bfloat16"]),
    ("--config.xla_cpu_ynn_fusions=dot,conv", ["xla_cpu_ynn_fusions='dot,conv'", "'conv'", "individual_dot"]),
    ("--config.eval_split=test[:5", ["eval_split", "test[:5", "train[:90%]"]),
])
def test_bad_config_value_is_one_line_error(tmp_path, override, culprits):
  workdir = tmp_path / "work"
  line = error_line(run_cli(workdir, override))
  for culprit in culprits:
    assert culprit in line, line
  assert_nothing_written(workdir)


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_batch_not_divisible_by_device_count(tmp_path, key):
  """On 2 (forced CPU) devices a batch of 15 cannot be split: refused before the data set is built."""
  workdir = tmp_path / "work"
  line = error_line(run_cli(workdir, f"--config.{key}=15", num_devices=2))
  assert f"config key {key}=15 " in line and "device count (2)" in line, line
  assert_nothing_written(workdir)


# The command line on a disk that is full: every file fileio writes takes 10 bytes, then fails with ENOSPC.
_FULL_DISK_MAIN = """
import builtins, sys
sys.path.insert(0, "tests")
import helpers
from cqd_jax import fileio, main

fileio.open = lambda path, mode="r": helpers.FullDiskFile(builtins.open(path, mode))
main.run()
"""


def test_full_disk_is_one_line_error(tmp_path):
  workdir = tmp_path / "work"
  line = error_line(run_cli(workdir, main=("-c", _FULL_DISK_MAIN)))
  assert "No space left on device" in line and str(workdir / "config.json") in line, line
  assert list(workdir.iterdir()) == []  # Neither config.json nor its temporary file.


def test_verbose_shows_traceback(tmp_path):
  result = run_cli(tmp_path / "work", "--config.optimizer.lr=-1", "--verbose")
  assert result.returncode != 0
  assert "Traceback" in result.stderr
  assert "ConfigError" in result.stderr and "optimizer.lr" in result.stderr


def test_read_only_workdir(tmp_path):
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    probe = parent / "probe"
    try:
      probe.write_text("x")
      writable = True
      probe.unlink()
    except OSError:
      writable = False
    if writable or os.access(parent, os.W_OK):
      pytest.skip("chmod 555 does not block writes here (running as root)")
    line = error_line(run_cli(parent / "work"))
    assert str(parent / "work") in line and "writable" in line, line
  finally:
    parent.chmod(0o755)


def test_workdir_under_a_file(tmp_path):
  """A workdir that cannot be created (works as root too, unlike chmod)."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  line = error_line(run_cli(blocker / "work"))
  assert str(blocker / "work") in line and "writable" in line, line


def test_changed_config_is_refused(finished):
  workdir, _, _ = finished
  stored = (workdir / "config.json").read_bytes()
  line = error_line(run_cli(workdir, "--config.optimizer.lr=0.01"))
  assert "optimizer.lr" in line and str(workdir / "config.json") in line, line
  assert (workdir / "config.json").read_bytes() == stored
  # Keys that do not change results (log_every) are not refused; nothing is retrained.
  result = run_cli(workdir, "--config.log_every=1")
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("finished earlier, skipping") == 3


def test_corrupt_checkpoint_is_one_line_error(finished, tmp_path):
  source, _, _ = finished
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  stage = workdir / "stages" / "train_a@crop"
  (stage / "result.json").unlink()
  for later in ("lowres__train_b", "lowres__cqd"):
    shutil.rmtree(workdir / "stages" / later)
  step_dir = stage / "checkpoints" / "4"
  garbled = 0
  for path in sorted((step_dir / "state").rglob("*")):
    if path.is_file() and path.parent.name == "d":  # the array data files of the state
      path.write_bytes(b"\x00garbage" * 3)
      garbled += 1
  assert garbled > 0, sorted(str(p) for p in step_dir.rglob("*"))
  line = error_line(run_cli(workdir))
  assert str(step_dir) in line, line
  assert not (stage / "result.json").exists()


@pytest.mark.parametrize("change", ["--config.model.options.widths=(8,32)",
                                    "--config.dataset.options.num_classes=3"], ids=["architecture", "classes"])
def test_teacher_from_another_model_is_one_line_error(finished, tmp_path, change):
  """A teacher checkpoint that does not fit the configured model: a clear error, not a shape traceback."""
  source, _, _ = finished
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  shutil.rmtree(workdir / "stages" / "lowres__cqd")  # needs the (finished) teacher again
  line = error_line(run_cli(workdir, change, "--allow_config_change"))
  assert str(workdir / "stages" / "train_a@crop" / "checkpoints") in line, line
  assert "another model/class count" in line, line
  assert not (workdir / "stages" / "lowres__cqd" / "result.json").exists()


# ------------------------------------------------------------------------------------ flag-parsing errors

@pytest.mark.parametrize("args,culprits", [
    (["--config.not_a_key=1"], ["not_a_key"]),
    (["--config.degradations.nope.b=crop"], ["nope"]),
    (["--config.optimizer.lrr=0.1"], ["lrr"]),
    (["--config=configs/demo.py:nope"], ["nope"]),
    (["--config=configs/no_such_file.py"], ["configs/no_such_file.py"]),
    (["--config.optimizer.lr=abc"], ["--config.optimizer.lr=abc", "float"]),
    (["--config.distill.temperature=ten"], ["--config.distill.temperature=ten", "float"]),
    (["--config.batch_size=1.5"], ["--config.batch_size=1.5", "int"]),
    (["--config.distill.cache_teacher=maybe"], ["--config.distill.cache_teacher=maybe", "boolean"]),
], ids=["unknown_key", "unknown_nested_key", "typo_key", "config_arg_raises", "missing_config_file", "lr_not_number",
        "temperature_not_number", "batch_size_not_integer", "cache_teacher_not_boolean"])
def test_flag_parsing_error_is_one_line(tmp_path, args, culprits):
  """Errors that absl/ml_collections raise while parsing --config also get a one-line `error:`."""
  own_file = any(a.startswith("--config=") for a in args)
  result = run_cli(tmp_path / "work", *args, base=not own_file)
  line = error_line(result)
  for culprit in culprits:
    assert culprit in line, line
