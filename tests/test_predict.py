"""`python -m cqd_jax.predict` and cqd_jax.predict on the tiny finished run (conftest.tiny_run): each stage's
model behind its own view, the export and its reload, the commands and the Python snippet of
docs/using_models.md as written there, and one-line errors."""

import contextlib
import functools
import io
import json
import os
import re
import shlex

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

import helpers
from cqd_jax import analyze
from cqd_jax import degrade
from cqd_jax import experiment
from cqd_jax import input_pipeline
from cqd_jax import predict
from cqd_jax import train
from cqd_jax.models import srcnn

DOC = os.path.join(helpers.REPO, "docs", "using_models.md")
DOC_WORKDIR, DOC_EXPORT = "/tmp/cqd_demo", "/tmp/lowres_cqd_model"  # replaced by the tiny run's paths


def run_predict(*args: str) -> helpers.CliResult:
  """`python -m cqd_jax.predict args` in this process; its flags are its own (no global absl state)."""
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      predict.main(["cqd_jax.predict", *args])
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
  return helpers.CliResult(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def run(tiny_run):
  """The tiny run's config, a Runner on it, and its test split as one batch (20 images with boxes)."""
  workdir = str(tiny_run.workdir)
  config = analyze.load_config(workdir)
  data = experiment.prepare_data(config, workdir)
  batch = next(input_pipeline.eval_batches(data.builder, "test", batch_size=20))
  assert batch["mask"].all()
  return config, experiment.Runner(config, workdir, data), batch


@pytest.fixture(scope="module")
def cqd(tiny_run):
  return predict.load(str(tiny_run.workdir), "lowres/cqd")


def _result(workdir, stage: experiment.Stage) -> dict:
  with open(os.path.join(experiment.stage_dir(str(workdir), stage), "result.json")) as f:
    return json.load(f)[0]


@functools.partial(jax.jit, static_argnums=(0, 2))
def _model_on_view(model, variables, view, batch) -> jax.Array:
  """Class probabilities of `model` on `view` of a data set batch, computed as train.eval_step does."""
  images = view(train.to_float(batch["image"]), batch["bbox"], jax.random.key(0))[0]
  return jax.nn.softmax(model.apply(variables, images, train=False))


def test_each_stage_sees_its_own_view(tiny_run, run, cqd):
  """The cqd student reads view B (crop+lowres), the teacher view A (crop): the predictor's probabilities are
  the stage's model on that view, as the evaluation step computes it, and not on the other view."""
  config, runner, batch = run
  teacher = predict.load(str(tiny_run.workdir), "lowres/train_a")
  assert (cqd.stage, cqd.view, teacher.stage, teacher.view) == ("lowres/cqd", "crop+lowres", "train_a@crop", "crop")
  stages = {s.name: s for s in experiment.plan(config)}
  views = {spec: degrade.make_view(spec, config.image_size, config.degrade_params.to_dict())
           for spec in ("crop", "crop+lowres")}
  for predictor, other, accuracy in ((cqd, "crop", "accuracy_b"), (teacher, "crop+lowres", "accuracy_a")):
    stage = stages[predictor.stage]
    model, variables = runner.student(stage)[0], runner.final_variables(stage)
    own, wrong = (_model_on_view(model, variables, views[spec], {k: batch[k] for k in ("image", "bbox")})
                  for spec in (predictor.view, other))
    probabilities = predictor.predict(batch["image"], batch["bbox"])
    assert probabilities.shape == (20, 4) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, own, atol=1e-6)
    assert np.abs(probabilities - wrong).max() > 1e-3, predictor.stage
    top1 = np.mean(probabilities.argmax(1) == batch["label"])  # the run's own evaluation of the same images
    assert top1 == pytest.approx(_result(tiny_run.workdir, stage)[accuracy]), predictor.stage
    top = predictor.top_k(batch["image"][:2], k=9, boxes=batch["bbox"][:2])
    assert [[label for label, _, _ in row] for row in top] == np.argsort(-probabilities[:2], 1, kind="stable").tolist()
    assert [name for _, name, _ in top[0]] == [predictor.class_names[label] for label, _, _ in top[0]]


def test_export_reloads_without_the_workdir(cqd, run, tmp_path):
  batch = run[2]
  path = cqd.export(str(tmp_path / "model"))
  assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary directory left
  assert sorted(os.listdir(path)) == ["model.json", "variables.safetensors"]
  spec = json.loads((tmp_path / "model" / "model.json").read_text())
  assert spec["model"] == {"name": "small_cnn", "options": {"widths": [8, 16]}, "dtype": "float32"}
  assert (spec["view"]["spec"], spec["image_size"], spec["storage_size"]) == ("crop+lowres", 32, 64)
  exported = predict.load_exported(path)
  assert (exported.stage, exported.view, exported.class_names) == (cqd.stage, cqd.view, cqd.class_names)
  np.testing.assert_array_equal(exported.predict(batch["image"]), cqd.predict(batch["image"]))
  assert predict.load_exported(cqd.export(path)).stage == "lowres/cqd"  # an earlier export is replaced
  with pytest.raises(ValueError, match=f"--export {tmp_path} exists and is not an exported model"):
    cqd.export(str(tmp_path))
  with pytest.raises(ValueError, match=f"{tmp_path} is not an exported model: it has no model.json"):
    predict.load_exported(str(tmp_path))


def test_a_view_network_is_loaded_and_exported(tiny_run, run, cqd, tmp_path):
  """A lowres_sr view runs the run's SRCNN (stages/sr/variables), which the export carries along."""
  workdir = helpers.copy_run(tiny_run, tmp_path / "work")
  config = json.loads((workdir / "config.json").read_text())
  config["degradations"]["lowres"]["b"] = "crop+lowres_sr"
  (workdir / "config.json").write_text(json.dumps(config))
  sr = srcnn.SRCNN(widths=(4, 4)).init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  sr = jax.tree.map(lambda x: x + 0.1, sr)  # an untrained SRCNN (last layer zero) would change nothing
  (workdir / "stages" / "sr").mkdir()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(workdir / "stages" / "sr" / "variables"), sr)
  checkpointer.wait_until_finished()
  (workdir / "stages" / "sr" / "result.json").write_text("{}")
  predictor = predict.load(str(workdir), "lowres/cqd")
  assert predictor.view == "crop+lowres_sr"
  jax.tree.map(np.testing.assert_array_equal, predictor.view_networks, {"sr": sr})
  images, boxes = run[2]["image"][:4], run[2]["bbox"][:4]
  exported = predict.load_exported(predictor.export(str(tmp_path / "model")))
  np.testing.assert_array_equal(exported.predict(images, boxes), predictor.predict(images, boxes))
  assert np.abs(predictor.predict(images, boxes) - cqd.predict(images, boxes)).max() > 1e-3  # the same model


def _doc_blocks(language: str) -> list[str]:
  with open(DOC) as f:
    return re.findall(rf"```{language}\n(.*?)```", f.read(), re.S)


def test_the_documented_commands_and_snippet_run(tiny_run, run, cqd, tmp_path, monkeypatch):
  """docs/using_models.md as written, on the tiny run: its predict and export commands, then its Python."""
  batch = run[2]
  Image.fromarray(batch["image"][0]).save(tmp_path / "bird1.png")
  Image.fromarray(batch["image"][1]).resize((90, 50)).convert("L").save(tmp_path / "bird2.png")  # other size, gray
  monkeypatch.chdir(tmp_path)
  export = str(tmp_path / "exported")
  commands = [line for block in _doc_blocks("sh") for line in block.splitlines() if "cqd_jax.predict" in line]
  assert len(commands) == 2 and all(DOC_WORKDIR in c for c in commands) and DOC_EXPORT in commands[1]
  outputs = []
  for command in commands:
    args = shlex.split(command.replace(DOC_WORKDIR, str(tiny_run.workdir)).replace(DOC_EXPORT, export))
    assert args[:3] == ["python", "-m", "cqd_jax.predict"]
    result = run_predict(*args[3:])
    assert result.returncode == 0, result.stderr[-3000:]
    outputs.append(result.stdout)
  images = [predict.read_image("bird1.png"), predict.read_image("bird2.png")]
  assert images[1].shape == (50, 90, 3)
  expected = ["lowres/cqd: view 'crop+lowres' at 32 px; top 3 of 4 classes"]
  for path, row in zip(("bird1.png", "bird2.png"), cqd.top_k(images, k=3)):
    expected += [path, *(f"  {p:.4f}  {name} ({label})" for label, name, p in row)]
  assert outputs[0].splitlines() == expected
  assert outputs[1] == f"wrote {export}: lowres/cqd (small_cnn, view 'crop+lowres' at 32 px, 4 classes)\n"
  np.testing.assert_array_equal(predict.load_exported(export).predict(images), cqd.predict(images))

  (snippet,) = _doc_blocks("python")
  assert DOC_WORKDIR in snippet and DOC_EXPORT in snippet
  snippet = snippet.replace(DOC_WORKDIR, str(tiny_run.workdir)).replace(DOC_EXPORT, str(tmp_path / "doc_model"))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(snippet, {})  # pylint: disable=exec-used
  lines = printed.getvalue().splitlines()
  assert lines[0] == "lowres/cqd crop+lowres 32" and len(lines) == 1 + 3, lines
  assert (tmp_path / "doc_model" / "variables.safetensors").exists()


def test_bad_input_is_one_error_line(tiny_run, tmp_path, monkeypatch):
  workdir = tiny_run.workdir
  monkeypatch.chdir(tmp_path)
  (tmp_path / "empty").mkdir()
  (tmp_path / "notes.png").write_text("not an image")
  finished = "finished stages: train_a@crop, lowres/train_b, lowres/cqd"
  cases = [
      ([f"--workdir={workdir}", "--stage=lowres/cqd", str(tmp_path / "missing.png")],
       f"error: cannot read image {tmp_path / 'missing.png'}: No such file or directory"),
      ([f"--workdir={workdir}", "--stage=lowres/cqd", str(tmp_path / "notes.png")],
       f"error: cannot read image {tmp_path / 'notes.png'}: not an image file PIL can read"),
      ([f"--workdir={workdir}", "--stage=lowres/kd", "--export=x"],
       f"error: --stage lowres/kd: the run in {workdir} has no such stage; {finished}"),
      ([f"--workdir={tmp_path / 'empty'}", "--stage=lowres/cqd", "--export=x"],
       f"error: --workdir {tmp_path / 'empty'} has no config.json: not the workdir of a cqd_jax.main run"),
      ([f"--workdir={workdir}", "--export=x"], "error: --workdir and --stage are required"),
      ([f"--workdir={workdir}", "--stage=lowres/cqd"], "error: give image files to classify, or --export=<directory>"),
      ([f"--workdir={workdir}", "--stage=lowres/cqd", "--top_k=0", "a.png"],
       "error: flag --top_k=0: 0 is not a positive integer"),
  ]
  for args, line in cases:
    assert helpers.error_line(run_predict(*args)) == line
  unfinished = helpers.copy_run(tiny_run, tmp_path / "work")
  (unfinished / "stages" / "lowres__cqd" / "result.json").unlink()
  assert helpers.error_line(run_predict(f"--workdir={unfinished}", "--stage=lowres/cqd", "--export=x")) == (
      f"error: --stage lowres/cqd: stage lowres/cqd of the run in {unfinished} is not finished; finished stages: "
      "train_a@crop, lowres/train_b")
  assert not os.path.exists(tmp_path / "x")
