"""docs/extending.md and docs/concepts.md against the code.

The example files are the ones the page shows, and every other Python block on it runs. Its commands train at
the tiny size (helpers.CLI_TINY_ARGS): a new degradation in one file runs CQD on the demo data, and the model,
loss, method and data set examples run together. The methods table of concepts.md is the registry's.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re
import shlex
import shutil
import struct
import subprocess
import sys
from typing import Any

import numpy as np
from PIL import Image
import pytest

import helpers

DOCS = pathlib.Path(helpers.REPO, "docs")
EXAMPLES = DOCS / "examples"
# A fenced block (language, text), with the marker comment (kind, name) of the line before it, if any.
_BLOCK = re.compile(r"(?:<!-- (example|command): (\S+) -->\n)?```(\w+)\n(.*?)```", re.S)
# The toy data set of the image_folder example: a square of its class's colour on noise.
COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30), "yellow": (230, 220, 30)}


def _blocks() -> list[tuple[str | None, str | None, str, str]]:
  """(marker kind, marker name, language, text) of every fenced block of docs/extending.md."""
  return [m.groups() for m in _BLOCK.finditer((DOCS / "extending.md").read_text())]


def _command(name: str) -> list[str]:
  """The arguments of `python -m cqd_jax.main` in the command block `name` of extending.md."""
  text = next(body for kind, n, _, body in _blocks() if (kind, n) == ("command", name))
  args = shlex.split(text.replace("\\\n", " "))
  assert args[:3] == ["python", "-m", "cqd_jax.main"], args
  return args[3:]


def _with(args: list[str], *overrides: str) -> list[str]:
  """`args` then `overrides`, without the earlier values of an overridden flag or of the config keys under it;
  --config first (its overrides must follow it)."""
  keys = [o.split("=", 1)[0] for o in overrides]

  def replaced(arg: str) -> bool:
    key = arg.split("=", 1)[0]
    return any(key == k or (k.startswith("--config.") and key.startswith(k + ".")) for k in keys)

  out = [a for a in args if not replaced(a)] + list(overrides)
  return sorted(out, key=lambda a: not a.startswith("--config="))


def _run(cwd: pathlib.Path, args: list[str]) -> None:
  """`python -m cqd_jax.main args` in `cwd`, as a user runs it: the plugins are imported fresh, from `cwd`."""
  result = subprocess.run([sys.executable, "-m", "cqd_jax.main", *args], cwd=cwd, env=helpers.subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"


def _results(workdir: pathlib.Path) -> dict[str, dict[str, str]]:
  """results.csv's rows by method (one degradation)."""
  with open(workdir / "results.csv") as f:
    return {row["method"]: row for row in csv.DictReader(f)}


def _summaries(logdir: pathlib.Path) -> dict[str, Any]:
  """{tag: last summary value} of the TensorBoard event files in `logdir` (TFRecords of Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  out = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      for value in event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]).summary.value:
        out[value.tag] = value
      pos += length + 16  # the length and its CRC, the record and its CRC
  return out


def _grey_levels(summary: Any) -> int:
  """The number of distinct uint8 values in an image summary."""
  return len(np.unique(np.asarray(Image.open(io.BytesIO(summary.image.encoded_image_string)))))


def _write_image_folder(root: pathlib.Path) -> None:
  """A toy data set in image_folder's layout, each square's box in boxes.csv."""
  rng = np.random.default_rng(0)
  lines = []
  for split, n in (("train", 8), ("validation", 2), ("test", 5)):
    for name, colour in COLOURS.items():
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        image = rng.integers(0, 256, (48, 48, 3), np.uint8)
        y, x = rng.integers(0, 24, 2)
        image[y:y + 24, x:x + 24] = colour
        Image.fromarray(image).save(root / split / name / f"{i}.png")
        lines.append(f"{split}/{name}/{i}.png,{y / 48},{x / 48},{(y + 24) / 48},{(x + 24) / 48}")
  (root / "boxes.csv").write_text("\n".join(lines) + "\n")


def _method_row(name: str, method: Any) -> str:
  """The line of concepts.md's methods table for `method`."""
  views = {"a": "A", "b": "B", "ab": "A or B"}
  student = method.stream(method.student)
  size = f" at `{student.scale}`" if isinstance(student.scale, str) else ""
  frozen = ", ".join(f"{method.stream(s).source} on {views[method.stream(s).view]}" for s in method.frozen)
  terms = ", ".join(t.loss + (f" (`{t.options}`)" if isinstance(t.options, str) else "")
                    + (f" via {t.adapter}" if t.adapter else "") for t in method.terms)
  return (f"| `{name}` | {views[student.view]}{size}, `{student.model}` | {student.source or '-'} | "
          f"{frozen or '-'} | {terms} | {method.description} |")


def test_methods_table_is_the_registry():
  from cqd_jax import methods  # pylint: disable=g-import-not-at-top

  text = (DOCS / "concepts.md").read_text()
  table = text.split("<!-- methods-table")[1].split("<!-- end methods-table -->")[0].splitlines()[1:]
  assert table == ["| method | trains | starts from | reads (frozen) | loss terms (config section) | description |",
                   "|---|---|---|---|---|---|", *(_method_row(n, m) for n, m in methods.METHODS.items())]


def test_python_blocks_are_the_example_files_or_run(tmp_path, monkeypatch):
  from cqd_jax import degrade, losses, models  # pylint: disable=g-import-not-at-top
  from cqd_jax.data import registry  # pylint: disable=g-import-not-at-top

  for module, name in ((degrade, "OPS"), (models, "MODELS"), (losses, "DISTILL_LOSSES"), (losses, "TERMS"),
                       (registry, "DATASETS"), (registry, "SPLITS")):
    monkeypatch.setattr(module, name, dict(getattr(module, name)))  # the blocks' plugins register into copies
  for path in EXAMPLES.glob("*.py"):
    shutil.copy(path, tmp_path)
  monkeypatch.chdir(tmp_path)
  shown = []
  for kind, name, language, text in _blocks():
    if kind == "example":
      assert (language, text) == ("python", pathlib.Path(helpers.REPO, name).read_text()), name
      shown.append(name)
    elif language == "python":
      exec(compile(text, "docs/extending.md", "exec"), {})  # pylint: disable=exec-used
  assert sorted(shown) == sorted(f"docs/examples/{path.name}" for path in EXAMPLES.glob("*.py"))


def test_commands_not_run_here_are_parts_of_one_that_is():
  """Every shell block is a marked command; those of the model, loss, method and data set set their flags as the
  "all" command does, which test_model_loss_method_and_data_set_run_together runs (posterize's runs itself)."""
  assert all(kind == "command" for kind, _, language, _ in _blocks() if language == "sh")
  together = set(_command("all"))
  plugins = next(arg for arg in together if arg.startswith("--config.plugins="))
  for name in ("residual_cnn", "reverse_kl", "cqd_hint", "image_folder"):
    for arg in _command(name):
      key, _, value = arg.partition("=")
      plugin = key == "--config.plugins" and f"'{value}'" in plugins
      assert arg in together or key in ("--config", "--workdir") or plugin, (name, arg)


@pytest.mark.slow
def test_a_degradation_in_one_file_runs_cqd(tmp_path):
  """The documented command, with posterize.py beside it, trains CQD whose view B is posterized."""
  shutil.copy(EXAMPLES / "posterize.py", tmp_path)
  workdir = tmp_path / "work"
  _run(tmp_path, _with(helpers.CLI_TINY_ARGS, *_command("posterize"), f"--workdir={workdir}",
                       "--config.methods=('train_a','cqd')"))
  cqd = _results(workdir)["cqd"]
  assert (cqd["degradation"], cqd["stage"], cqd["steps_trained"]) == ("posterize", "posterize/cqd", "4")
  views = _summaries(workdir / "tensorboard" / "posterize__cqd")  # the first batch as each stream saw it
  assert _grey_levels(views["views/b_32px"]) <= 3 < _grey_levels(views["views/a_32px"])  # levels=3
  # Stored absolute, so that analyze, predict and a resume find the plugin from any directory.
  assert json.loads((workdir / "config.json").read_text())["plugins"] == [str(tmp_path / "posterize.py")]


@pytest.mark.slow
def test_model_loss_method_and_data_set_run_together(tmp_path):
  """The "all" command trains the residual network with reverse-KL cqd and cqd_hint on a folder of images."""
  for name in ("residual_cnn.py", "reverse_kl.py", "cqd_hint.py", "image_folder.py"):
    shutil.copy(EXAMPLES / name, tmp_path)
  _write_image_folder(tmp_path / "my_images")
  workdir = tmp_path / "work"
  _run(tmp_path, _with(helpers.CLI_TINY_ARGS, *_command("all"), f"--workdir={workdir}"))
  rows = _results(workdir)
  assert {(m, r["model"], r["steps_trained"]) for m, r in rows.items()} == {
      (m, "residual_cnn", "4") for m in ("train_a", "cqd", "cqd_hint")}
  assert json.loads((workdir / "config.json").read_text())["kd"]["loss"] == "reverse_kl"
  assert "hint" in _summaries(workdir / "tensorboard" / "lowres__cqd_hint")  # the method_defs term's metric
  labels = workdir / "data" / "image_folder" / "1.0.0" / "label.labels.txt"
  assert labels.read_text().split() == sorted(COLOURS)
