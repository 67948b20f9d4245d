r"""CUB-200-2011, regular -> distorted: thin-plate-spline warp of the box crop, 14x14 control grid, each point
moved by Gaussian noise of variance 4 px (at 224 px).

Target: the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split) in config.paper
below; `python -m cqd_jax.report` sets finished runs beside it.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_distortion.py --workdir=/tmp/cub_distortion \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config.degradations = {"distortion": {"a": "crop", "b": "crop+distort"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"distortion/train_a/a": 67.3, "distortion/train_a/b": 50.0,
                               "distortion/train_b/b": 59.3, "distortion/a_then_b/b": 60.9,
                               "distortion/cqd/b": 62.8, "distortion/a_cqd/b": 63.3})
  return config
