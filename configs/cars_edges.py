r"""Stanford Cars, colour -> edges of the whole image (the paper used the Structured Edge detector; cqd_jax
uses a Canny-like detector in pure JAX).

Target, the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split):
  train_a on A 58.8 | train_a on B 4.6 | train_b 44.4 | a_then_b 49.9 | cqd 48.7 | a_cqd 50.8

  python -m data_prep.build --dataset=cars_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cars_edges.py --workdir=/tmp/cars_edges \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", train_images=7329, distill_weight=50.0)
  config.degradations = {"edges": {"a": "full", "b": "full+edges"}}
  return config
