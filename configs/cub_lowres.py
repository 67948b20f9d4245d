r"""CUB-200-2011, high -> low resolution: A is the box crop at 224 px, B that crop at 50 px upsampled to 224.

Target: the paper's Table 1 (vgg-m, ImageNet-initialised; top-1 % on the official test split) in config.paper
below; `python -m cqd_jax.report` sets finished runs beside it.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_lowres.py --workdir=/tmp/cub_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config.degradations = {"lowres": {"a": "crop", "b": "crop+lowres"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 1 (vgg-m, ImageNet-initialised)",
                      results={"lowres/train_a/a": 67.3, "lowres/train_a/b": 41.0, "lowres/train_b/b": 60.7,
                               "lowres/a_then_b/b": 62.3, "lowres/cqd/b": 63.4, "lowres/a_cqd/b": 64.3})
  return config
