r"""CUB-200-2011, localised -> non-localised: A is the bird's box crop, B the whole image.

Target, the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split):
  train_a on A 67.3 | train_a on B 57.0 | train_b 60.2 | a_then_b 62.1 | cqd 63.4 | a_cqd 64.0

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_localization.py --workdir=/tmp/cub_localization \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", train_images=5395, distill_weight=200.0)
  config.degradations = {"localization": {"a": "crop", "b": "full"}}
  return config
