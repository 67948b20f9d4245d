r"""CUB-200-2011, localised high resolution -> non-localised low resolution (the CQD poster's fourth setting).

Target, the poster (vgg-m; top-1 %): oracle 67.0 | no adaptation 24.9 | fine-tuning 46.2 | staged training 50.4 |
CQD 52.7

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_localization_lowres.py --workdir=/tmp/cub_localization_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", train_images=5395, distill_weight=200.0)
  config.degradations = {"localization_lowres": {"a": "crop", "b": "full+lowres"}}
  return config
