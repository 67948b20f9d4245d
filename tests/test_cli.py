"""End-to-end tests of `python -m cqd_jax.main` on a tiny config: results, resuming, and one-line errors.

The finished run (conftest.tiny_run: three stages of 4 steps on 4 classes) is shared by the tests. Error
messages are checked in this process through the command line's own flag parser and entry point
(helpers.run_cli_in_process), so the `error:` line and exit status are the user's; a few subprocess runs
check what only a real process shows: the exit status after a failed restore, the missing traceback beside
TensorStore's late callbacks, `--verbose`, and forced CPU devices.
"""

import csv
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers
from helpers import error_line, run_cli, run_cli_in_process
from cqd_jax import fileio
from cqd_jax import main as cli
from cqd_jax import models
from cqd_jax import multihost


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_end_to_end_writes_results(tiny_run):
  workdir, result = tiny_run.workdir, tiny_run.result
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
  for stage in helpers.STAGES:
    assert (workdir / "stages" / stage / "result.json").is_file(), stage
    assert (workdir / "stages" / stage / "checkpoints" / "4").is_dir(), stage
  # Every model is the tiny small_cnn: the same parameter count and FLOPs per image in every row.
  model = models.get_model("small_cnn", helpers.NUM_CLASSES, widths=helpers.WIDTHS)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), helpers.IMAGE_SIZE))
  assert {(int(r["params"]), float(r["flops_per_image"])) for r in rows} == {
      (models.count_params(variables), models.flops_per_image(model, variables, helpers.IMAGE_SIZE))}
  assert "| stage | method | parameters | FLOPs / image |" in (workdir / "results.md").read_text()


def test_overrides_reached_the_config(tiny_run):
  config = json.loads((tiny_run.workdir / "config.json").read_text())
  assert config["model"]["options"]["widths"] == [8, 16]
  assert config["methods"] == list(helpers.CLI_METHODS)
  assert config["num_steps"] == 4 and config["batch_size"] == 16
  assert list(config["degradations"]) == ["lowres"]
  assert config["dataset"]["options"]["num_classes"] == 4


def test_rerun_skips_finished_stages(tiny_run, tmp_path):
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  before = (workdir / "results.csv").read_bytes()
  with helpers.recording_compiles() as (train_steps, _):
    result = run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("finished earlier, skipping") == 3, result.stderr
  assert " steps in " not in result.stderr and not train_steps, "a finished stage was trained again"
  assert (workdir / "results.csv").read_bytes() == before
  assert "| cqd | B | " in result.stdout


# ------------------------------------------------------------------------------------- one run per workdir

# Holds the workdir's lock as a run does, says so, then waits to be killed.
_HOLD_LOCK = """
import sys
from cqd_jax import fileio
lock = fileio.workdir_lock(sys.argv[1])
lock.__enter__()
print("held", flush=True)
sys.stdin.read()
"""


def test_second_run_on_a_busy_workdir_is_refused(tiny_run, tmp_path):
  """A second run on a workdir in use gets one line naming the holder and changes nothing; once the holder
  is SIGKILLed the OS has dropped its lock, and a run refused inside the lock (a changed config) releases it."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != fileio.LOCK_FILE}
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(workdir)], cwd=helpers.REPO,
                            env=helpers.subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    result = run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
    line = error_line(result)
    assert result.returncode == 1
    assert f"--workdir {workdir} is in use by another run (pid {holder.pid} on " in line, line
    assert ", started 20" in line and " UTC; lock " in line and "another --workdir" in line, line
    assert {p: p.read_bytes() for p in before} == before and "finished earlier" not in result.stderr
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args("--config.optimizer.lr=0.01")]))
  assert "optimizer.lr" in line, line
  result = run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("finished earlier, skipping") == 3
  with fileio.workdir_lock(str(workdir)):  # released when the run returned
    assert f"pid {os.getpid()} on " in (workdir / fileio.LOCK_FILE).read_text()


def test_workdir_lock_on_a_file_system_that_cannot_lock(tmp_path, monkeypatch, caplog):
  """Where flock is not supported the run warns once and goes on; other errors are raised."""
  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(fcntl, "flock", no_locks)
  monkeypatch.setattr(fileio, "_warned_unlockable", False)
  for _ in range(2):
    with fileio.workdir_lock(str(tmp_path)):
      pass
  warnings = [r.getMessage() for r in caplog.records if "cannot lock files" in r.getMessage()]
  assert len(warnings) == 1 and str(tmp_path) in warnings[0] and "No locks available" in warnings[0], warnings
  def denied(fd, operation):
    raise OSError(errno.EACCES, "Permission denied")
  monkeypatch.setattr(fcntl, "flock", denied)
  with pytest.raises(OSError, match="Permission denied"):
    with fileio.workdir_lock(str(tmp_path)):
      pass


def test_only_process_0_locks_and_every_process_hears_it_is_busy(tmp_path, monkeypatch):
  """In a multi-host run process 0 holds the lock; when it finds the workdir busy, the others raise too
  (multihost.any_process is the collective that tells them; faked here for one process)."""
  monkeypatch.setattr(multihost, "is_primary", lambda: False)
  with cli.workdir_lock(str(tmp_path)):
    assert not (tmp_path / fileio.LOCK_FILE).exists()
  monkeypatch.setattr(multihost, "any_process", lambda flag: True)
  with pytest.raises(fileio.WorkdirBusy, match="in use by another run"):
    with cli.workdir_lock(str(tmp_path)):
      pass


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
    ("--config.kd.loss=kl_x", ["kd.loss", "kl_x"]),
    ("--config.kd.temperature=-1", ["kd.temperature=-1", "> 0"]),
    ("--config.kd.temperature=0", ["kd.temperature=0", "> 0"]),
    ("--config.kd.weight=-5", ["kd.weight=-5", ">= 0"]),
    ("--config.kd.weight=nan", ["kd.weight=nan", "finite"]),
    ("--config.dataset.name=nope", ["dataset.name", "nope", "cqd_synthetic"]),
    ("--config.dataset.options.test_per_class=0", ["dataset.options", "test_per_class", ">= 1"]),
    ("--config.eval_split=nope", ["eval_split", "'nope'", "available: train, validation, test"]),
    ("--config.validation_split=valid", ["validation_split='valid'", "no split 'valid'", "available: train"]),
    ("--config.compute_dtype=float8", ["compute_dtype='float8'", "bfloat16"]),
    ("--config.xla_cpu_ynn_fusions=dot,conv", ["xla_cpu_ynn_fusions='dot,conv'", "'conv'", "individual_dot"]),
    ("--config.eval_split=test[:5", ["eval_split", "test[:5", "train[:90%]"]),
])
def test_bad_config_value_is_one_line_error(tmp_path, override, culprits):
  workdir = tmp_path / "work"
  result = run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args(override)])
  assert result.returncode == 1
  line = error_line(result)
  for culprit in culprits:
    assert culprit in line, line
  assert_nothing_written(workdir)


@pytest.mark.slow
def test_batch_not_divisible_by_device_count(tmp_path, monkeypatch):
  """On 2 (forced CPU) devices a batch of 15 cannot be split: refused before the data set is built. The
  subprocess runs on 2 real devices; eval_batch_size takes the same path with the count patched."""
  workdir = tmp_path / "work"
  result = run_cli(workdir, "--config.batch_size=15", num_devices=2)
  assert result.returncode == 1
  line = error_line(result)
  assert "config key batch_size=15 " in line and "device count (2)" in line, line
  assert_nothing_written(workdir)
  import jax
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args("--config.eval_batch_size=15")]))
  assert "config key eval_batch_size=15 " in line and "device count (2)" in line, line
  assert_nothing_written(workdir)


def test_full_disk_is_one_line_error(tmp_path, monkeypatch):
  """Every file fileio writes takes FULL_DISK_ROOM bytes, then fails with ENOSPC: the first is config.json."""
  import builtins
  monkeypatch.setattr(fileio, "open", lambda path, mode="r": helpers.FullDiskFile(builtins.open(path, mode)),
                      raising=False)
  workdir = tmp_path / "work"
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS]))
  assert "No space left on device" in line and str(workdir / "config.json") in line, line
  # Neither config.json nor its temporary file; only the lock, which every run leaves (an OS lock on it dies
  # with the process).
  assert [p.name for p in workdir.iterdir()] == [fileio.LOCK_FILE]


def test_full_disk_on_a_later_write_keeps_the_old_file(tiny_run, tmp_path, monkeypatch):
  """A full disk while the results table is rewritten (the last write of a run): the error names results.md,
  which keeps its complete old contents, and no temporary file is left."""
  import builtins
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  old = (workdir / "results.md").read_text()
  real_open = builtins.open

  def opener(path, mode="r"):
    full = os.path.basename(path).startswith(".results.tmp") and path.endswith(".md")
    return helpers.FullDiskFile(real_open(path, mode)) if full else real_open(path, mode)

  monkeypatch.setattr(fileio, "open", opener, raising=False)
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS]))
  assert "No space left on device" in line and str(workdir / "results.md") in line, line
  assert (workdir / "results.md").read_text() == old
  assert not [p for p in workdir.iterdir() if p.name.startswith(".") and p.name != fileio.LOCK_FILE]


@pytest.mark.slow
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
    if os.access(parent, os.W_OK):
      pytest.skip(f"{helpers.AS_ROOT}: chmod 555 does not block writes here")
    line = error_line(run_cli_in_process([f"--workdir={parent / 'work'}", *helpers.CLI_TINY_ARGS]))
    assert str(parent / "work") in line and "writable" in line, line
  finally:
    parent.chmod(0o755)


def test_workdir_under_a_file(tmp_path):
  """A workdir that cannot be created (works as root too, unlike chmod)."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  line = error_line(run_cli_in_process([f"--workdir={blocker / 'work'}", *helpers.CLI_TINY_ARGS]))
  assert str(blocker / "work") in line and "writable" in line, line


def test_changed_config_is_refused(tiny_run, tmp_path):
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  stored = (workdir / "config.json").read_bytes()
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args("--config.optimizer.lr=0.01")]))
  assert "optimizer.lr" in line and str(workdir / "config.json") in line, line
  assert (workdir / "config.json").read_bytes() == stored
  # Keys that do not change results (log_every) are not refused; nothing is retrained.
  result = run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args("--config.log_every=1")])
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("finished earlier, skipping") == 3


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_error(tiny_run, tmp_path):
  """A real process: after the failed restore, TensorStore's reads still in flight must not print tracebacks."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work", drop=("lowres__train_b", "lowres__cqd"))
  stage = workdir / "stages" / "train_a@crop"
  (stage / "result.json").unlink()
  step_dir = stage / "checkpoints" / "4"
  garbled = 0
  for path in sorted((step_dir / "state").rglob("*")):
    if path.is_file() and path.parent.name == "d":  # the array data files of the state
      path.write_bytes(b"\x00garbage" * 3)
      garbled += 1
  assert garbled > 0, sorted(str(p) for p in step_dir.rglob("*"))
  result = run_cli(workdir)
  assert result.returncode == 1
  line = error_line(result)
  assert str(step_dir) in line, line
  assert not (stage / "result.json").exists()


@pytest.mark.parametrize("change", ["--config.model.options.widths=(8,32)",
                                    "--config.dataset.options.num_classes=3"], ids=["architecture", "classes"])
def test_teacher_from_another_model_is_one_line_error(tiny_run, tmp_path, change):
  """A teacher checkpoint that does not fit the configured model: a clear error, not a shape traceback."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work", drop=("lowres__cqd",))  # cqd needs the teacher again
  line = error_line(run_cli_in_process([f"--workdir={workdir}", *helpers.cli_tiny_args(change),
                                        "--allow_config_change"]))
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
    (["--config.kd.temperature=ten"], ["--config.kd.temperature=ten", "float"]),
    (["--config.batch_size=1.5"], ["--config.batch_size=1.5", "int"]),
    (["--config.cache_teacher=maybe"], ["--config.cache_teacher=maybe", "boolean"]),
], ids=["unknown_key", "unknown_nested_key", "typo_key", "config_arg_raises", "missing_config_file", "lr_not_number",
        "temperature_not_number", "batch_size_not_integer", "cache_teacher_not_boolean"])
def test_flag_parsing_error_is_one_line(tmp_path, args, culprits):
  """Errors that absl/ml_collections raise while parsing --config also get a one-line `error:`."""
  own_file = any(a.startswith("--config=") for a in args)
  result = run_cli_in_process([f"--workdir={tmp_path / 'work'}", *([] if own_file else helpers.CLI_TINY_ARGS), *args])
  assert result.returncode == 1
  line = error_line(result)
  for culprit in culprits:
    assert culprit in line, line


def test_results_use_the_final_model_and_report_the_best_validation_step(tiny_run, tmp_path, monkeypatch):
  """The cqd stage again with validation scores that make step 2 the best: results.csv names step 2 and its
  score and the step-2 checkpoint is kept beside the final one, while the test accuracies in results.csv come
  from evaluating the final (step 4) parameters, not step 2's."""
  import jax
  import orbax.checkpoint as ocp
  from cqd_jax import checkpoint, experiment
  workdir = helpers.copy_run(tiny_run, tmp_path / "work", drop=("lowres__cqd",))
  scores = {2: 0.875, 4: 0.125}
  monkeypatch.setattr(experiment.Runner, "_validate",
                      lambda self, stage, state: {checkpoint.BEST_METRIC: scores[int(jax.device_get(state.step))]})
  evaluations = []
  evaluate = experiment.Runner.evaluate

  def recording(self, stage, variables, view_b, split=None):
    accuracy = evaluate(self, stage, variables, view_b, split)
    evaluations.append((stage.name, split, jax.device_get(variables), accuracy))
    return accuracy

  monkeypatch.setattr(experiment.Runner, "evaluate", recording)
  result = run_cli_in_process([f"--workdir={workdir}", *helpers.CLI_TINY_ARGS])
  assert result.returncode == 0, result.stderr[-4000:]
  [row] = [r for r in read_csv(workdir / "results.csv") if r["method"] == "cqd"]
  assert (int(row["best_step"]), float(row["best_val_accuracy"])) == (2, 0.875)
  checkpoints = workdir / "stages" / "lowres__cqd" / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2, 4]
  [(_, _, evaluated, accuracy)] = [e for e in evaluations if e[0] == "lowres/cqd" and e[1] is None]
  assert (float(row["accuracy_a"]), float(row["accuracy_b"])) == (accuracy["accuracy_a"], accuracy["accuracy_b"])
  saved = {step: ocp.StandardCheckpointer().restore(checkpoints / str(step) / "state")["params"] for step in (2, 4)}
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(evaluated["params"], saved[4]) and not same(evaluated["params"], saved[2])


def test_help_lists_the_configs_methods_and_degradation_ops():
  from cqd_jax import main  # pylint: disable=g-import-not-at-top

  assert main.catalogue() in main.__doc__  # what absl prints for --help
  for name in ("demo", "cub_compression", "cars_multires", "cqd_to_small", "pixel_distillation", "crop", "lowres_sr"):
    assert name in main.catalogue(), name


def test_shipped_configs_are_found_from_any_directory(tmp_path, monkeypatch):
  from cqd_jax import config_lib  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  demo = os.path.join(config_lib.CONFIGS, "demo.py")
  for given in ("configs/demo.py", "demo.py", "demo"):
    assert config_lib.resolve_config(["m", f"--config={given}:lowres", "--config.seed=1"]) == [
        "m", f"--config={demo}:lowres", "--config.seed=1"]
  assert config_lib.resolve_config(["m", "--config", "demo"]) == ["m", "--config", demo]
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs/demo.py").write_text("")  # a file of the user's own wins
  for kept in ("configs/demo.py", "/elsewhere/demo.py", "configs/no_such_config.py"):
    assert config_lib.resolve_config(["m", f"--config={kept}"]) == ["m", f"--config={kept}"]


def test_pyproject_installs_every_package_and_the_configs():
  """pyproject.toml lists the packages by hand (configs/ is installed as cqd_jax.configs): a new package must
  be added there, or a pip install from git would lack it."""
  import tomllib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(helpers.REPO, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  found = {os.path.relpath(root, helpers.REPO).replace(os.sep, ".") for root, _, files in
           os.walk(os.path.join(helpers.REPO, "cqd_jax")) if "__init__.py" in files}
  assert set(setuptools["packages"]) == found | {"data_prep", "cqd_jax.configs"}
  assert setuptools["package-dir"] == {"cqd_jax.configs": "configs"}
