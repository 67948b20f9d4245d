"""The multi-resolution model (cqd_jax/multires.py): the Fourier router tells the demo's low-resolution images
from the originals, a perfect router gives the oracle's row, and a tiny run of configs/demo.py:multires writes
the table."""

import csv
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

import helpers
from cqd_jax import config_lib
from cqd_jax import degrade
from cqd_jax import experiment
from cqd_jax import multires
from cqd_jax import train
from cqd_jax.data import synthetic

SPEC = synthetic.SyntheticSpec(num_classes=4, image_size=64, train_per_class=10, validation_per_class=1,
                               test_per_class=10, seed=1)


def _features(split):
  """Router features of view A and view B of a demo split, and the domains (1 = B)."""
  data = synthetic.make_split(SPEC, split)
  images, boxes = train.to_float(jnp.asarray(data["image"])), jnp.asarray(data["bbox"])
  views = [degrade.make_view(spec, helpers.IMAGE_SIZE, helpers.DEGRADE_PARAMS) for spec in (helpers.VIEW_A,
                                                                                          helpers.VIEW_B)]
  features = [multires.fft_features(view(images, boxes, jax.random.key(0))[0]) for view in views]
  return jnp.concatenate(features), jnp.repeat(jnp.arange(2), len(images))


def test_fft_router_tells_lowres_from_original_on_held_back_images():
  features, domains = _features("train")
  assert features.shape == (80, multires.FFT_SIZE ** 2)
  params = multires.train_router(features, domains, steps=200)
  test_features, test_domains = _features("test")
  accuracy = float(jnp.mean(multires.route(params, test_features) == test_domains))
  assert accuracy > 0.95, accuracy


def test_perfect_router_gives_the_oracle_row_and_a_blind_one_the_high_experts():
  rng = np.random.default_rng(0)
  correct = {m: (rng.random(30) < 0.6, rng.random(30) < 0.4) for m in ("train_a", "a_cqd", "mixture_ab")}
  perfect = [np.zeros(30, bool), np.ones(30, bool)]
  rows = multires.table(correct, perfect, high="train_a", low="a_cqd")
  assert list(rows) == ["train_a", "a_cqd", "mixture_ab", "multi-res", "oracle"]
  assert rows["multi-res"] == rows["oracle"]
  assert rows["oracle"][:2] == (np.mean(correct["train_a"][0]), np.mean(correct["a_cqd"][1]))
  assert rows["oracle"][2] == np.mean(np.concatenate([correct["train_a"][0], correct["a_cqd"][1]]))
  blind = multires.table(correct, [np.zeros(30, bool)] * 2, high="train_a", low="a_cqd")
  assert blind["multi-res"] == blind["train_a"]


def test_tiny_demo_run_writes_the_multires_table(tmp_path):
  """Four steps per stage; the experts' cells agree with results.csv (the same images and views)."""
  overrides = helpers.cli_tiny_args("--config.methods=('train_a','a_cqd','mixture_ab')", "--config.multires.steps=20")
  result = helpers.run_cli_in_process([f"--workdir={tmp_path}", "--config=configs/demo.py:multires",
                                       *(a for a in overrides if not a.startswith("--config="))])
  assert result.returncode == 0, result.stderr[-4000:]
  lines = (tmp_path / "multires.md").read_text().splitlines()
  assert lines[0] == "| model | method | test on A | test on B | test on A+B |"
  assert [line.split(" | ")[:2] for line in lines[2:7]] == [
      ["| A", "train_a"], ["| A,CQD", "a_cqd"], ["| A+B", "mixture_ab"], ["| multi-res", "router: train_a / a_cqd"],
      ["| oracle", "true domain: train_a / a_cqd"]]
  assert lines[8].startswith("Router (linear on 65x65 log |FFT| features): the domain of ")
  with open(tmp_path / "multires.csv") as f:
    table = {r["model"]: r for r in csv.DictReader(f)}
  assert list(table) == ["train_a", "a_cqd", "mixture_ab", "multi-res", "oracle"]
  assert list(table["oracle"]) == ["model", "accuracy_a", "accuracy_b", "accuracy_ab"]
  with open(tmp_path / "results.csv") as f:
    results = {r["method"]: r for r in csv.DictReader(f)}
  for method in ("train_a", "a_cqd", "mixture_ab"):
    for test in ("a", "b"):
      assert abs(float(table[method][f"accuracy_{test}"]) - float(results[method][f"accuracy_{test}"])) < 1e-6
  assert table["oracle"]["accuracy_a"] == table["train_a"]["accuracy_a"]
  assert table["oracle"]["accuracy_b"] == table["a_cqd"]["accuracy_b"]


def test_cars_configs_plan_the_experts_and_the_mixture():
  """configs/cars_multires.py (the paper's Table 3 setup) and configs/cars_subset.py:multires (its CPU sample)."""
  for name, args in (("cars_multires", ()), ("cars_subset", ("multires",))):
    spec = importlib.util.spec_from_file_location(name, os.path.join(helpers.REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*args)
    config_lib.validate(config)
    multires.check(config)
    assert [s.name for s in experiment.plan(config)] == ["train_a@full", "lowres/a_cqd", "lowres/mixture_ab"]
    assert config.degradations.lowres.b == "full+lowres" and config.kd.weight == 50.0
