"""Tests for cqd_jax.sr and the `lowres_sr` view: the SRCNN beats bicubic upsampling on held-back demo images,
and views read its variables as call-time arguments, never as compiled-in constants."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax import degrade, sr
from cqd_jax.data import synthetic
from cqd_jax.models import srcnn

SIZE, LOW = 32, 8  # As configs/demo.py: 32 px crops, low resolution 8 px.
WIDTHS = (32, 16)  # Narrower than the paper's (64, 32), to train in seconds on CPU.
SPEC = synthetic.SyntheticSpec(num_classes=20, image_size=64, train_per_class=10, test_per_class=2)


def _crops(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(SIZE px box crops in [0, 1], the stored images in [0, 1]) of a demo split."""
  data = synthetic.make_split(SPEC, split)
  images = jnp.asarray(data["image"], jnp.float32) / 255.0
  return np.asarray(degrade.crop(images, jnp.asarray(data["bbox"]), jax.random.key(0), size=SIZE)[0]), data


@pytest.fixture(scope="module")
def demo() -> dict:
  """Demo crops (train: 200, test: 40, held back) and an SRCNN trained briefly on the train crops."""
  train_crops, _ = _crops("train")
  test_crops, test = _crops("test")
  variables = sr.train(train_crops, low=LOW, size=SIZE, num_steps=150, batch_size=8, widths=WIDTHS, progress=False)
  return dict(variables=variables, test_crops=test_crops, test=test)


def test_sr_beats_bicubic_on_held_back_images(demo):
  crops = demo["test_crops"]
  bicubic = degrade.lowres(crops, None, None, size=SIZE, low=LOW)[0]
  gain = sr.psnr(sr.upsample(demo["variables"], crops, low=LOW, size=SIZE), crops) - sr.psnr(bicubic, crops)
  assert gain > 0.3, f"SR is only {float(gain):.2f} dB better than bicubic"


def test_untrained_srcnn_is_the_identity():
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = srcnn.SRCNN(widths=(4, 4)).init(jax.random.key(0), images)
  np.testing.assert_array_equal(srcnn.enhance(variables, images), images)


def test_lowres_sr_view_equals_upsample(demo):
  view = degrade.make_view("crop+lowres_sr", SIZE, {"lowres_sr": {"low": LOW}})
  images = jnp.asarray(demo["test"]["image"][:4], jnp.float32) / 255.0
  out, _ = view(images, jnp.asarray(demo["test"]["bbox"][:4]), jax.random.key(0), {"sr": demo["variables"]})
  np.testing.assert_allclose(out, sr.upsample(demo["variables"], demo["test_crops"][:4], low=LOW, size=SIZE),
                             atol=1e-6)


def test_jitted_view_takes_variables_as_arguments(demo):
  view = degrade.make_view("lowres_sr", SIZE, {"lowres_sr": {"low": LOW}})
  traces = []

  def images_of(images, variables):
    traces.append(1)
    return view(images, None, jax.random.key(0), variables)[0]

  jitted = jax.jit(images_of)
  crops = demo["test_crops"][:4]
  untrained = srcnn.SRCNN(widths=WIDTHS).init(jax.random.key(0), crops)
  trained_out = jitted(crops, {"sr": demo["variables"]})
  untrained_out = jitted(crops, {"sr": untrained})
  assert len(traces) == 1
  np.testing.assert_allclose(untrained_out, degrade.lowres(crops, None, None, size=SIZE, low=LOW)[0], atol=1e-6)
  assert float(jnp.max(jnp.abs(trained_out - untrained_out))) > 1e-2


def test_view_without_variables_raises():
  assert degrade.needs_variables("crop + lowres_sr") == ("sr",)
  assert degrade.needs_variables("crop+lowres") == ()
  view = degrade.make_view("crop+lowres_sr", SIZE)
  with pytest.raises(ValueError, match="needs the trained network.*'sr'"):
    view(jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, 4)), jax.random.key(0))
  with pytest.raises(ValueError, match="'sr'"):
    view(jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, 4)), jax.random.key(0), {"other": {}})


def test_train_cycles_an_iterable_and_rejects_an_exhausted_one():
  batch = np.full((2, 16, 16, 3), 0.5, np.float32)
  kwargs = dict(low=4, size=16, num_steps=3, widths=(4, 4), progress=False)
  assert set(sr.train([batch], **kwargs)["params"]) == {"conv1", "conv2", "conv3"}
  with pytest.raises(ValueError, match="ran out"):
    sr.train(iter([batch]), **kwargs)


def test_sr_stage_trains_first_and_its_view_runs_through_the_experiment(tmp_path):
  """configs/demo.py:sr shrunk: stage `sr` is trained once (and read back on a re-run), and the lowres_sr
  column of the table comes from steps that read its variables."""
  from tests import helpers  # pylint: disable=g-import-not-at-top

  tiny = helpers.cli_tiny_args("--config=configs/demo.py:sr", "--config.sr.num_steps=3", "--config.sr.batch_size=8",
                               "--config.sr.widths=(4,4)", "--config.methods=('train_a','a_cqd')")
  args = [f"--workdir={tmp_path / 'w'}", *sorted(tiny, key=lambda a: not a.startswith("--config="))]  # file first
  result = helpers.run_cli_in_process(args)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "w/stages/sr/result.json").read_text())
  assert summary["num_steps"] == 3 and summary["low"] == 8 and summary["psnr_sr"] > 0
  header = (tmp_path / "w/results.md").read_text().splitlines()[0]
  assert header == "| method | test | lowres | lowres_sr |"
  again = helpers.run_cli_in_process(args)
  assert again.returncode == 0 and "stage sr: finished earlier" in again.stderr
