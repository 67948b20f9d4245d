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

from cqd_jax import config_lib
from cqd_jax import fileio


def _define_flags() -> None:
  """The command's flags, defined when it runs, not on import: cqd_jax.main defines --config too, and tests
  import both modules."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
  flags.DEFINE_string("out", "views.png", "PNG to write.")
  flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.dataset.data_dir or ./data).")
  flags.DEFINE_integer("num", 6, "Number of test images.")
  flags.DEFINE_integer("dpi", 120, "Resolution of the PNG.")
  flags.mark_flags_as_required(["config"])


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

  args = flags.FLAGS
  config = args.config
  config_lib.load_plugins(config)
  if args.data_dir:
    config.dataset.data_dir = args.data_dir
  data = experiment.prepare_data(config, workdir=".")  # the same data set (and default ./data) a run uses
  batch = next(input_pipeline.eval_batches(data.builder, config.eval_split, batch_size=args.num,
                                           image_size=config.dataset.storage_size or None))
  fig = view_figure(config, {k: v[:args.num] for k, v in batch.items()}, data.class_names)
  with fileio.atomic_path(args.out) as tmp:
    fig.savefig(tmp, dpi=args.dpi, format="png")
  print(f"wrote {args.out}: rows = A ({next(iter(config.degradations.values())).a}), then B of "
        f"{', '.join(config.degradations)}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=lambda argv: flags.FLAGS(config_lib.resolve_config(argv)))
