"""The low-resolution methods (kd, Pixel Distillation in two stages and in one, HORKD): their feature terms'
shapes across input sizes from traced shapes only, their streams switched by config, and the comparison
(configs/demo.py:compare) end to end from the command line, tiny: one shared run.
"""

import csv
import importlib.util
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
from cqd_jax import config_lib
from cqd_jax import experiment
from cqd_jax import methods

COMPARED = ("train_b", "train_b_low", "kd", "cqd", "a_cqd", "pixel_distillation", "pixel_distillation_isr", "horkd")


def _demo(arg="lowres"):
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(helpers.REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _resnet_config(scale):
  """A ResNet-50 teacher and ResNet-18 students and assistant at 224 px; the students at scale * 224."""
  config = _demo("compare")
  config.image_size = 224
  config.model = dict(name="resnet50", options={}, init_from="")
  config.small_model = dict(name="resnet18", options={}, init_from="")
  config.low_res.scale = scale
  return config


@pytest.mark.parametrize("student_px, stage", [(56, "stage2"), (112, "stage3"), (224, "stage4")])
def test_fsr_adapter_maps_the_student_feature_to_the_assistants(student_px, stage):
  config = _resnet_config(student_px / 224)
  known = methods.all_methods(config)
  network = lambda key: experiment.make_model(config, key, 10)
  method = experiment.resolve(known["pixel_distillation"], config, known, network)
  fsr = next(t for t in method.terms if t.metric == "fsr")
  # "auto": the deepest map at least 5x5 at the student's input (7x7 here; the next stage would be 3x3 or less)
  assert fsr.inputs == (f"student.features.{stage}", f"assistant.features.{stage}")
  shapes = experiment.output_shapes(method, network)
  side = 7 * 224 // student_px  # the assistant's map of the same stage at 224 px
  assert shapes[fsr.inputs[0]][1:3] == (7, 7) and shapes[fsr.inputs[1]][1:3] == (side, side)
  adapter = experiment.adapter_modules(method, shapes)["fsr"]
  out = jax.eval_shape(lambda x: adapter.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct(shapes[fsr.inputs[0]], np.float32))
  assert out.shape == shapes[fsr.inputs[1]]
  assert method.stream("student").image_size == student_px and method.stream("assistant").image_size == 224


def test_the_one_stage_decoder_maps_the_stem_to_the_high_resolution_image():
  config = _resnet_config(0.25)
  known = methods.all_methods(config)
  network = lambda key: experiment.make_model(config, key, 10)
  method = experiment.resolve(known["pixel_distillation_isr"], config, known, network)
  isr = next(t for t in method.terms if t.metric == "isr")
  assert isr.inputs == ("student.features.stem", "image.a") and isr.weight == 50.0
  shapes = experiment.output_shapes(method, network)
  assert shapes["student.features.stem"][1:3] == (28, 28) and shapes["image.a"] == (2, 224, 224, 3)
  decoder = experiment.adapter_modules(method, shapes)["isr"]
  params = jax.eval_shape(lambda x: decoder.init(jax.random.key(0), x), jax.ShapeDtypeStruct((2, 28, 28, 64),
                                                                                             np.float32))
  assert params["params"]["conv"]["kernel"].shape == (1, 1, 64, 3 * 8 * 8)  # 1x1 conv to 3 s^2, s = 8
  assert "prelu" in params["params"]


def test_the_assistant_is_a_stage_only_where_a_method_reads_it():
  config = _demo("compare")
  stages = lambda *names: [s.name for s in experiment.plan(_with(config, names))]
  assert stages("pixel_distillation") == ["train_a@crop", "pd_assistant@crop", "lowres/pixel_distillation"]
  # Dropping the assistant is a config change: the one-stage variant, or HORKD with its assistant terms off.
  assert stages("pixel_distillation_isr") == ["train_a@crop", "lowres/pixel_distillation_isr"]
  assert stages("horkd") == ["train_a@crop", "pd_assistant@crop", "lowres/horkd"]
  for key in ("kd_assistant", "distance_assistant", "angle_assistant"):
    config.horkd[key].weight = 0.0
  assert stages("horkd") == ["train_a@crop", "lowres/horkd"]
  known = methods.all_methods(config)
  method = methods.active(known["horkd"], config)
  assert [n for n, _ in method.streams] == ["student", "teacher"]
  assert [t.metric for t in method.terms] == ["ce", "kd_teacher", "distance_teacher", "angle_teacher"]
  config_lib.validate(_with(config, ("horkd",)))


def _with(config, names):
  config = config.copy_and_resolve_references()
  config.methods = names
  return config


def test_method_sections_default_when_a_config_lacks_them():
  config = _demo("lowres")  # no low_res, pd or horkd sections
  assert "pd" not in config and "low_res" not in config
  known = methods.all_methods(config)
  method = methods.resolve(known["pixel_distillation"], config, known)
  assert method.stream("student").image_size == 8  # low_res.scale 0.25 of 32 px
  assert dict(method.terms[1].options) == {"loss": "soft_ce", "temperature": 4.0, "t2_scale": True}
  config.pd = dict(kd=dict(temperature=2.0))  # a partial section overrides only its keys
  method = methods.resolve(known["pixel_distillation"], config, known)
  assert dict(method.terms[1].options)["temperature"] == 2.0 and method.terms[1].weight == 0.9
  config.low_res = dict(scale=0.05)
  with pytest.raises(methods.MethodError, match=r"config key low_res.scale=0.05: gives an input of 2 px"):
    methods.resolve(known["kd"], config, known)


def test_auto_feature_needs_a_map_of_five_pixels():
  config = _demo("compare")
  config.model.options.widths = (8, 16)
  config.low_res.scale = 0.125  # 4 px students: no map of 5x5
  known = methods.all_methods(config)
  network = lambda key: experiment.make_model(config, key, 4)
  with pytest.raises(methods.MethodError, match=r"no feature map of at least 5x5 for the 'auto' feature"):
    experiment.resolve(known["pixel_distillation"], config, known, network)


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("compare") / "work"
  args = [a for a in helpers.CLI_TINY_ARGS if not a.startswith(("--config=", "--config.methods"))]
  result = helpers.run_cli_in_process([f"--workdir={workdir}", "--config=configs/demo.py:compare", *args,
                                       "--config.progress_bar=False", "--config.compare_seconds=0"])
  assert result.returncode == 0, result.stderr[-4000:]
  assert "| lowres | pixel_distillation | small_cnn | 8 | B |" in result.stdout
  return workdir


@pytest.mark.slow
def test_comparison_table_from_the_command_line(compare_run):
  rows = list(csv.DictReader((compare_run / "comparison.csv").open()))
  assert [(r["method"], r["test"]) for r in rows] == [("train_a", "A"), ("train_a", "B")] + [(m, "B") for m in COMPARED]
  by = {r["method"]: r for r in rows if r["test"] == "B"}
  native = ("train_b_low", "kd", "pixel_distillation", "pixel_distillation_isr", "horkd")
  assert {m: by[m]["input_px"] for m in by} == {m: "8" if m in native else "32" for m in by}
  # The deployed Pixel Distillation student at ratio 4 costs at most 1/10 of the teacher's FLOPs per image.
  teacher = float(by["train_a"]["flops_per_image"])
  assert 0 < float(by["pixel_distillation"]["flops_per_image"]) <= teacher / 10
  assert float(by["pixel_distillation"]["flops_vs_teacher"]) <= 0.1
  assert all(float(r["images_per_s"]) > 0 for r in rows)
  assert all(0 <= float(r["accuracy"]) <= 100 for r in rows)
  md = (compare_run / "comparison.md").read_text()
  assert "timed one after another in one run" in md and "| lowres | horkd | small_cnn | 8 | B |" in md


@pytest.mark.slow
def test_fsr_adapter_trains_but_is_not_part_of_the_evaluated_model(compare_run):
  stage = compare_run / "stages" / "lowres__pixel_distillation" / "checkpoints" / "4" / "state"
  state = ocp.StandardCheckpointer().restore(stage)
  assert set(state["params"]["adapters"]) == {"fsr"}
  rows = {r["method"]: r for r in csv.DictReader((compare_run / "results.csv").open())}
  model_params = sum(int(np.size(v)) for v in jax.tree.leaves({k: v for k, v in state["params"].items()
                                                               if k != "adapters"}))
  adapter_params = sum(int(np.size(v)) for v in jax.tree.leaves(state["params"]["adapters"]))
  assert adapter_params > 0
  assert int(rows["pixel_distillation"]["params"]) == model_params == int(rows["train_b_low"]["params"])
  isr = ocp.StandardCheckpointer().restore(compare_run / "stages" / "lowres__pixel_distillation_isr" / "checkpoints"
                                           / "4" / "state")
  assert set(isr["params"]["adapters"]) == {"isr"}
  assert int(rows["pixel_distillation_isr"]["params"]) == model_params


def test_tuning_a_term_section_shares_the_stages_that_do_not_read_it():
  from cqd_jax import tune  # pylint: disable=g-import-not-at-top
  config = _demo("compare")
  assert tune.shared_methods(config, [("pd.fsr.weight", (0.5, 2.0))], ["pixel_distillation"]) == (
      "train_a", "pd_assistant")
  # The assistant reads pd.kd, so it is trained again for each point; the teacher is not.
  assert tune.shared_methods(config, [("pd.kd.temperature", (2.0, 4.0))], ["pixel_distillation"]) == ("train_a",)
  assert tune.shared_methods(config, [("low_res.scale", (0.25, 0.5))], ["kd"]) == ()
  assert config.compare and not tune.validation_config(config, ["kd"]).compare  # points time no models


@pytest.mark.parametrize("key, value, match", [
    ("pd.kd.temperature", -1.0, r"config key pd\.kd\.temperature=-1\.0 must be a finite number > 0"),
    ("horkd.angle_teacher.weight", float("nan"), r"config key horkd\.angle_teacher\.weight=nan must be a finite"),
])
def test_bad_method_section_values_name_their_key(key, value, match):
  config = _demo("compare")
  config_lib.set_value(config, key, value)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)
