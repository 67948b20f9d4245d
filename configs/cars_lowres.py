r"""Stanford Cars, high -> low resolution of the whole image (boxes unused): 224 -> 50 -> 224 px.

Target, the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split):
  train_a on A 58.8 | train_a on B 7.6 | train_b 41.1 | a_then_b 48.6 | cqd 46.2 | a_cqd 48.9
Table 3 (multi-resolution): mixture_ab (A+B) 57.3 on A, 46.8 on B.

  python -m data_prep.build --dataset=cars_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cars_lowres.py --workdir=/tmp/cars_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", train_images=7329, distill_weight=50.0)
  config.degradations = {"lowres": {"a": "full", "b": "full+lowres"}}
  return config
