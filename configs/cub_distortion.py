r"""CUB-200-2011, regular -> distorted: thin-plate-spline warp of the box crop, 14x14 control grid, each point
moved by Gaussian noise of variance 4 px (at 224 px).

Target, the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split):
  train_a on A 67.3 | train_a on B 50.0 | train_b 59.3 | a_then_b 60.9 | cqd 62.8 | a_cqd 63.3

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_distortion.py --workdir=/tmp/cub_distortion \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", train_images=5395, distill_weight=200.0)
  config.degradations = {"distortion": {"a": "crop", "b": "crop+distort"}}
  return config
