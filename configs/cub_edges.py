r"""CUB-200-2011, colour -> edges: A is the box crop, B its edge map (the paper used the Structured Edge
detector of Dollar & Zitnick; cqd_jax uses a Canny-like detector in pure JAX, see cqd_jax/degrade.py).

Target: the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split) in config.paper
below; `python -m cqd_jax.report` sets finished runs beside it.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_edges.py --workdir=/tmp/cub_edges \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config.degradations = {"edges": {"a": "crop", "b": "crop+edges"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"edges/train_a/a": 67.3, "edges/train_a/b": 1.8, "edges/train_b/b": 29.0,
                               "edges/a_then_b/b": 31.0, "edges/cqd/b": 32.7, "edges/a_cqd/b": 34.1})
  return config
