"""Draws what the models see: view A and each degradation's view B for a few test images of a config.

  python -m cqd_jax.visualize --config=configs/demo.py:lowres,localize,edges,distort --out=views.png
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
import jax
from matplotlib.figure import Figure  # not pyplot: no global figure state; savefig draws with Agg
import ml_collections
from ml_collections import config_flags
import numpy as np

from cqd_jax import fileio

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
_OUT = flags.DEFINE_string("out", "views.png", "PNG to write.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.dataset.data_dir or ./data).")
_NUM = flags.DEFINE_integer("num", 6, "Number of test images.")
_DPI = flags.DEFINE_integer("dpi", 120, "Resolution of the PNG.")


def view_figure(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray],
                class_names: Sequence[str]) -> Figure:
  """One row per view (A, then B of each degradation; labelled with its spec), one column per test image
  (titled with its class)."""
  from cqd_jax import degrade, train  # JAX-heavy, imported on use.

  images, boxes = train.to_float(batch["image"]), batch["bbox"]
  first = next(iter(config.degradations.values()))
  rows = [(f"A: {first.a}", first.a)] + [(f"B of {name}:\n{d.b}", d.b) for name, d in config.degradations.items()]
  n = len(images)
  fig = Figure(figsize=(1.6 * n + 1.2, 1.7 * len(rows) + 0.6), layout="constrained")
  fig.suptitle(f"What the models see ({config.image_size} px): view A and each degradation's view B")
  axes = fig.subplots(len(rows), n, squeeze=False)
  for r, (label, spec) in enumerate(rows):
    view = degrade.make_view(spec, config.image_size, config.degrade_params.to_dict())
    out = np.clip(np.asarray(view(images, boxes, jax.random.key(r))[0]), 0, 1)
    for c in range(n):
      ax = axes[r, c]
      ax.imshow(out[c], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(class_names[int(batch["label"][c])] if r == 0 else "", fontsize=8)
      ax.set_ylabel(label if c == 0 else "", fontsize=8)
  return fig


def main(argv: list[str]) -> None:
  del argv
  from cqd_jax import experiment, input_pipeline

  config = _CONFIG.value
  if _DATA_DIR.value:
    config.dataset.data_dir = _DATA_DIR.value
  data = experiment.prepare_data(config, workdir=".")  # the same data set (and default ./data) a run uses
  batch = next(input_pipeline.eval_batches(data.builder, config.eval_split, batch_size=_NUM.value,
                                           image_size=config.dataset.storage_size or None))
  fig = view_figure(config, {k: v[:_NUM.value] for k, v in batch.items()}, data.class_names)
  with fileio.atomic_path(_OUT.value) as tmp:
    fig.savefig(tmp, dpi=_DPI.value, format="png")
  print(f"wrote {_OUT.value}: rows = A ({next(iter(config.degradations.values())).a}), then B of "
        f"{', '.join(config.degradations)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
