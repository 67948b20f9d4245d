r"""Stanford Cars, low resolution upsampled by super-resolution instead of bicubic interpolation (the paper's
appendix A, Table 4): A is the whole image at 224 px; B at 50 px upsampled bicubically ("lowres") and at 56 px
upsampled x4 by an SRCNN trained first as stage `sr` ("lowres_sr"; configs/cub_sr.py says why and how).

  python -m cqd_jax.main --config=configs/cars_sr.py --workdir=/tmp/cars_sr \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", distill_weight=50.0)
  config = config_lib.super_resolution(config, "full")
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 4 (vgg-m; SR: Dong et al.'s ImageNet SRCNN, 56 -> 224 px)",
                      results={"lowres/train_a/a": 58.8, "lowres/train_a/b": 7.6, "lowres/train_b/b": 41.1,
                               "lowres/a_cqd/b": 48.9, "lowres_sr/train_a/b": 19.3, "lowres_sr/train_b/b": 48.0,
                               "lowres_sr/a_cqd/b": 53.5})
  return config
