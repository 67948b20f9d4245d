"""The paper's configs load and validate, and one runs end to end on a fixture CUB in the official layout."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

import fixtures_real as fx
from cqd_jax import config_lib
from cqd_jax import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "c*_*.py")) if not p.endswith("_subset.py"))
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
  assert config.distill.weight == (200.0 if is_cub else 50.0) and config.distill.temperature == 10.0
  opt = config.optimizer
  assert (opt.name, opt.lr, opt.end_lr, opt.momentum, opt.weight_decay) == ("sgd", 1e-3, 5e-5, 0.9, 5e-4)
  assert config.batch_size == 128 and config.image_size == 224
  (deg,) = config.degradations.values()
  assert deg.a == ("crop" if is_cub else "full")
  stages = [s.name for s in experiment.plan(config)]
  assert stages[0].startswith("train_a@") and len(stages) == 6


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in SUBSET_CONFIGS.items() for a in args])
def test_cpu_subset_configs(name, arg):
  """configs/{cub,cars}_subset.py:<degradation>: the CPU-sized protocol from ImageNet EfficientNet-Lite0."""
  config = _load(os.path.join(REPO, "configs", f"{name}.py"), arg)
  config_lib.validate(config)
  assert list(config.degradations) == [arg]
  assert (config.model.name, config.model.init_from) == ("efficientnet_lite0", "imagenet:efficientnet_lite0")
  assert config.dataset.manual_dir.endswith(os.path.join("shared", "data", name))
  assert config.distill.weight == (200.0 if name == "cub_subset" else 50.0) and config.distill.temperature == 10.0
  assert config.image_size == 160 and config.degrade_params.lowres.low == 36
  assert [s.method for s in experiment.plan(config)] == ["train_a", "train_b", "a_then_b", "cqd", "a_cqd"]
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown degradation 'blur'"):
    _load(os.path.join(REPO, "configs", f"{name}.py"), "blur")


def test_cub_lowres_runs_end_to_end_on_a_fixture(tmp_path):
  fx.write_cub(tmp_path / "manual")
  cmd = [sys.executable, "-m", "cqd_jax.main", "--config=configs/cub_lowres.py", f"--workdir={tmp_path / 'w'}",
         f"--config.dataset.manual_dir={tmp_path / 'manual'}", f"--config.dataset.data_dir={tmp_path / 'data'}",
         "--config.dataset.storage_size=48", "--config.image_size=32", "--config.degrade_params.lowres.low=8",
         "--config.model.name=small_cnn", "--config.num_steps=2",
         "--config.batch_size=4", "--config.eval_batch_size=4", "--config.log_every=1",
         "--config.checkpoint_every=2", "--config.methods=('train_a','cqd')", "--config.progress_bar=False"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| cqd | B |" in result.stdout
  rows = (tmp_path / "w" / "results.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[1].startswith("lowres,train_a,")
