r"""CUB-200-2011, localised -> non-localised: A is the bird's box crop, B the whole image.

Target: the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split) in config.paper
below; `python -m cqd_jax.report` sets finished runs beside it.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_localization.py --workdir=/tmp/cub_localization \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config.degradations = {"localization": {"a": "crop", "b": "full"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"localization/train_a/a": 67.3, "localization/train_a/b": 57.0,
                               "localization/train_b/b": 60.2, "localization/a_then_b/b": 62.1,
                               "localization/cqd/b": 63.4, "localization/a_cqd/b": 64.0})
  return config
