r"""CUB-200-2011, localised high resolution -> non-localised low resolution (the CQD poster's fourth setting).

Target: the poster's numbers (vgg-m; top-1 %) in config.paper below; `python -m cqd_jax.report` sets finished runs
beside them.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_localization_lowres.py --workdir=/tmp/cub_localization_lowres \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config.degradations = {"localization_lowres": {"a": "crop", "b": "full+lowres"}}
  # The poster's top-1 accuracy (%) by "<degradation>/<method>/<test view>" (cqd_jax.report): oracle, no
  # adaptation, fine-tuning, staged training and CQD, which is A,CQD (its CQD matches the paper's A,CQD, e.g.
  # 34.1 on edges). Its "data augmentation" (51.7) is left out: the poster does not say it is mixture_ab.
  config.paper = dict(source="Su, CQD poster (vgg-m)",
                      results={"localization_lowres/train_a/a": 67.0, "localization_lowres/train_a/b": 24.9,
                               "localization_lowres/train_b/b": 46.2, "localization_lowres/a_then_b/b": 50.4,
                               "localization_lowres/a_cqd/b": 52.7})
  return config
