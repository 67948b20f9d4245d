r"""CUB-200-2011, high -> low resolution: A is the box crop at 224 px, B that crop at 50 px upsampled to 224.

Target, the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split):
  train_a on A 67.3 | train_a on B 41.0 | train_b 60.7 | a_then_b 62.3 | cqd 63.4 | a_cqd 64.3

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_lowres.py --workdir=/tmp/cub_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", train_images=5395, distill_weight=200.0)
  config.degradations = {"lowres": {"a": "crop", "b": "crop+lowres"}}
  return config
