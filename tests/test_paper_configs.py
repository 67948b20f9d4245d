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
PAPER_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "c*_*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


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
