"""The paper's configs load and validate, and one runs end to end on a fixture CUB in the official layout."""

import glob
import importlib.util
import os
import pathlib

import pytest

import fixtures_real as fx
import helpers
from cqd_jax import config_lib
from cqd_jax import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The comparisons with the later low-resolution methods (not the CQD paper's Table 1 protocol).
LOW_RES_CONFIGS = {"cub_lowres_compare": ("train_a", "pd_assistant", "train_b", "train_b_low", "kd", "cqd", "a_cqd",
                                          "pixel_distillation", "pixel_distillation_isr", "horkd"),
                   "cub_lowres_pixel_distillation": ("train_a", "pd_assistant", "train_b_low", "pixel_distillation",
                                                     "pixel_distillation_isr"),
                   "cub_lowres_horkd": ("train_a", "pd_assistant", "train_b_low", "kd", "horkd")}
# The paper's other tables: their configs and the stages they train.
OTHER_TABLES = {"cub_compression": 7, "cars_multires": 3, "cub_sr": 5, "cars_sr": 5}
PAPER_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "c*_*.py"))
                       if not p.endswith("_subset.py") and os.path.basename(p)[:-3] not in {*LOW_RES_CONFIGS,
                                                                                            *OTHER_TABLES})
# The configs that give the paper's numbers to cqd_jax.report.
WITH_PAPER_NUMBERS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                            if "config.paper = " in pathlib.Path(p).read_text())
SUBSET_CONFIGS = {"cub_subset": ("localization", "lowres", "edges", "distortion", "localization_lowres"),
                  "cars_subset": ("lowres", "edges")}


def _load(path, *args):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def test_all_seven_paper_configs_exist():
  names = {os.path.basename(p)[:-3] for p in PAPER_CONFIGS}
  assert names == {"cub_localization", "cub_lowres", "cars_lowres", "cub_edges", "cars_edges", "cub_distortion",
                   "cub_localization_lowres"}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: os.path.basename(p))
def test_paper_config_has_the_papers_protocol(path):
  config = _load(path)
  config_lib.validate(config)
  is_cub = "cub_" in os.path.basename(path)
  assert config.dataset.name == ("cub_paired" if is_cub else "cars_paired")
  assert config.kd.weight == (200.0 if is_cub else 50.0) and config.kd.temperature == 10.0
  opt = config.optimizer
  assert (opt.name, opt.lr, opt.end_lr, opt.momentum, opt.weight_decay) == ("sgd", 1e-3, 5e-5, 0.9, 5e-4)
  assert config.batch_size == 128 and config.image_size == 224
  (deg,) = config.degradations.values()
  assert deg.a == ("crop" if is_cub else "full")
  stages = [s.name for s in experiment.plan(config)]
  assert stages[0].startswith("train_a@") and len(stages) == 6


@pytest.mark.parametrize("name", sorted(OTHER_TABLES))
def test_other_table_configs_validate(name):
  config = _load(os.path.join(REPO, "configs", f"{name}.py"))
  config_lib.validate(config)
  assert len(experiment.plan(config)) == OTHER_TABLES[name] and config.paper.results


def test_the_table_1_and_poster_configs_have_the_papers_numbers():
  names = {os.path.basename(p)[:-3] for p in WITH_PAPER_NUMBERS}
  assert names >= {"cub_localization", "cub_lowres", "cars_lowres", "cub_edges", "cars_edges", "cub_distortion",
                   "cub_localization_lowres"}


@pytest.mark.parametrize("path", WITH_PAPER_NUMBERS, ids=lambda p: os.path.basename(p))
def test_paper_numbers_name_the_configs_degradations_methods_and_views(path):
  """config.paper (cqd_jax.report's schema): each key is <degradation>/<method>/<a or b> of this config."""
  config = _load(path)
  trained = {s.method for s in experiment.plan(config)}
  assert config.paper.source and config.paper.results
  for key, accuracy in config.paper.results.items():
    degradation, method, test = key.split("/")
    assert degradation in config.degradations and method in trained and test in ("a", "b"), key
    assert 0 < accuracy < 100, key


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in SUBSET_CONFIGS.items() for a in args])
def test_cpu_subset_configs(name, arg):
  """configs/{cub,cars}_subset.py:<degradation>: the CPU-sized protocol from ImageNet EfficientNet-Lite0."""
  config = _load(os.path.join(REPO, "configs", f"{name}.py"), arg)
  config_lib.validate(config)
  assert list(config.degradations) == [arg]
  assert (config.model.name, config.model.init_from) == ("efficientnet_lite0", "imagenet:efficientnet_lite0")
  assert config.dataset.manual_dir.endswith(os.path.join("shared", "data", name))
  assert config.kd.weight == (200.0 if name == "cub_subset" else 50.0) and config.kd.temperature == 10.0
  assert config.image_size == 160 and config.degrade_params.lowres.low == 36
  assert [s.method for s in experiment.plan(config)] == ["train_a", "train_b", "a_then_b", "cqd", "a_cqd"]
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown degradation 'blur'"):
    _load(os.path.join(REPO, "configs", f"{name}.py"), "blur")


@pytest.mark.parametrize("name", LOW_RES_CONFIGS)
def test_low_resolution_comparison_configs(name):
  """ResNet-50 teacher at 224 px, ResNet-18 students on the 56 px crop itself, the comparison table."""
  config = _load(os.path.join(REPO, "configs", f"{name}.py"))
  config_lib.validate(config)
  assert [s.method for s in experiment.plan(config)] == list(LOW_RES_CONFIGS[name])
  assert (config.model.name, config.small_model.name, config.image_size) == ("resnet50", "resnet18", 224)
  assert config.degrade_params.lowres.low == 56 and config.low_res.scale == 0.25 and config.compare
  if name == "cub_lowres_pixel_distillation":  # the authors' optimizer
    assert (config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay) == (0.01, 0.9, 5e-4)
    assert config.batch_size == 64 and (config.pd.kd.temperature, config.pd.kd.weight) == (4.0, 0.9)


def test_subset_comparison_is_lite2_to_lite0_at_160_to_40_px():
  config = _load(os.path.join(REPO, "configs", "cub_subset.py"), "compare")
  config_lib.validate(config)
  assert (config.model.name, config.small_model.name) == ("efficientnet_lite2", "efficientnet_lite0")
  assert config.degrade_params.lowres.low == 40 and list(config.degradations) == ["lowres"]
  assert [s.method for s in experiment.plan(config)] == list(LOW_RES_CONFIGS["cub_lowres_compare"])


def test_cub_lowres_runs_end_to_end_on_a_fixture(tmp_path):
  fx.write_cub(tmp_path / "manual")
  args = ["--config=configs/cub_lowres.py", f"--workdir={tmp_path / 'w'}",
          f"--config.dataset.manual_dir={tmp_path / 'manual'}", f"--config.dataset.data_dir={tmp_path / 'data'}",
          "--config.dataset.storage_size=48", "--config.image_size=32", "--config.degrade_params.lowres.low=8",
          "--config.model.name=small_cnn", "--config.model.options={'widths': (8, 16)}", "--config.num_steps=2",
          "--config.batch_size=4", "--config.eval_batch_size=4", "--config.log_every=1",
          "--config.checkpoint_every=2", "--config.methods=('train_a','cqd')", "--config.progress_bar=False"]
  result = helpers.run_cli_in_process(args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| cqd | B |" in result.stdout
  rows = (tmp_path / "w" / "results.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[1].startswith("lowres,train_a,")


def test_corrupt_data_set_file_is_one_line_error(tmp_path):
  """A corrupt image in the user's CUB files, reported through the command line before any training."""
  root = fx.write_cub(tmp_path / "manual")
  bad = root / "images" / fx.cub_filename(fx.images(fx.CUB_COUNTS)[5])
  bad.write_bytes(b"not an image")
  result = helpers.run_cli_in_process([
      "--config=configs/cub_lowres.py", f"--workdir={tmp_path / 'w'}",
      f"--config.dataset.manual_dir={tmp_path / 'manual'}", f"--config.dataset.data_dir={tmp_path / 'data'}"])
  assert result.returncode == 1
  line = helpers.error_line(result)
  assert "corrupt image" in line and str(bad) in line, line
  assert not (tmp_path / "w" / "stages").exists()
  assert not list((tmp_path / "data").glob("**/1.0.0"))  # no data set version directory


def test_missing_data_set_files_are_one_line_error(tmp_path):
  (tmp_path / "manual" / "unrelated").mkdir(parents=True)
  result = helpers.run_cli_in_process([
      "--config=configs/cub_lowres.py", f"--workdir={tmp_path / 'w'}",
      f"--config.dataset.manual_dir={tmp_path / 'manual'}", f"--config.dataset.data_dir={tmp_path / 'data'}"])
  line = helpers.error_line(result)
  assert f"missing in manual_dir {tmp_path / 'manual'}" in line and "CUB_200_2011 or CUB_200_2011.tgz" in line, line
