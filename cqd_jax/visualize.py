"""Draws what the models see: view A and each degradation's view B for a few test images of a config.

  python -m cqd_jax.visualize --config=configs/demo.py:lowres,localize,edges,distort --out=views.png
"""

from __future__ import annotations


import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags
from PIL import Image

from cqd_jax import fileio

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
_OUT = flags.DEFINE_string("out", "views.png", "PNG to write.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.dataset.data_dir or ./data).")
_NUM = flags.DEFINE_integer("num", 6, "Number of test images.")
_SCALE = flags.DEFINE_integer("scale", 4, "Pixel magnification.")


def view_grid(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray], scale: int = 4) -> np.ndarray:
  """uint8 image: one row per view (A, then B of each degradation), one column per example."""
  from cqd_jax import degrade, train  # JAX-heavy, imported on use.

  images, boxes = train.to_float(batch["image"]), batch["bbox"]
  specs = [next(iter(config.degradations.values())).a] + [d.b for d in config.degradations.values()]
  rows = []
  for i, spec in enumerate(specs):
    view = degrade.make_view(spec, config.image_size, config.degrade_params.to_dict())
    out = np.asarray(view(images, boxes, jax.random.key(i))[0])
    rows.append(np.concatenate(list(out), axis=1))
  grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
  return np.kron(grid, np.ones((scale, scale, 1), np.uint8))


def main(argv: list[str]) -> None:
  del argv
  from cqd_jax import experiment, input_pipeline

  config = _CONFIG.value
  if _DATA_DIR.value:
    config.dataset.data_dir = _DATA_DIR.value
  data = experiment.prepare_data(config, workdir=".")  # the same data set (and default ./data) a run uses
  batch = next(input_pipeline.eval_batches(data.builder, config.eval_split, batch_size=_NUM.value,
                                           image_size=config.dataset.storage_size or None))
  grid = view_grid(config, batch, _SCALE.value)
  with fileio.atomic_path(_OUT.value) as tmp:
    Image.fromarray(grid).save(tmp)
  print(f"wrote {_OUT.value}: rows = A ({next(iter(config.degradations.values())).a}), then B of "
        f"{', '.join(config.degradations)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
