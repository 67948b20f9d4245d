r"""Stanford Cars, high -> low resolution of the whole image (boxes unused): 224 -> 50 -> 224 px.

Target: the paper's Tables 1 and 3 (multi-resolution: a_cqd and mixture_ab, the paper's A+B, also on A; vgg-m,
ImageNet-initialised; top-1 % on the official test split) in config.paper below; `python -m cqd_jax.report`
sets finished runs beside them.

  python -m data_prep.build --dataset=cars_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cars_lowres.py --workdir=/tmp/cars_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", distill_weight=50.0)
  config.degradations = {"lowres": {"a": "full", "b": "full+lowres"}}
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Tables 1 and 3 (vgg-m, ImageNet-initialised)",
                      results={"lowres/train_a/a": 58.8, "lowres/train_a/b": 7.6, "lowres/train_b/b": 41.1,
                               "lowres/a_then_b/b": 48.6, "lowres/cqd/b": 46.2, "lowres/a_cqd/b": 48.9,
                               "lowres/a_cqd/a": 31.8, "lowres/mixture_ab/a": 57.3, "lowres/mixture_ab/b": 46.8})
  return config
