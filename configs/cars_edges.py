r"""Stanford Cars, colour -> edges of the whole image (the paper used the Structured Edge detector; cqd_jax
uses a Canny-like detector in pure JAX).

Target: the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split) in config.paper
below; `python -m cqd_jax.report` sets finished runs beside it.

  python -m data_prep.build --dataset=cars_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cars_edges.py --workdir=/tmp/cars_edges \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", distill_weight=50.0)
  config.degradations = {"edges": {"a": "full", "b": "full+edges"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"edges/train_a/a": 58.8, "edges/train_a/b": 4.6, "edges/train_b/b": 44.4,
                               "edges/a_then_b/b": 49.9, "edges/cqd/b": 48.7, "edges/a_cqd/b": 50.8})
  return config
