r"""CUB-200-2011, low resolution upsampled by super-resolution instead of bicubic interpolation (the paper's
appendix A, Table 4): A is the box crop at 224 px; B that crop at 50 px upsampled bicubically ("lowres") and
at 56 px upsampled x4 by an SRCNN ("lowres_sr"); train_a, train_b and a_cqd on each.

The paper used Dong et al.'s SRCNN trained on ImageNet, which cannot be downloaded here: the run first trains
its own 9-5-5 SRCNN (residual, on (lowres, original) pairs of the training crops; cqd_jax/view_networks.py,
config.sr) as stage `sr`, then passes its weights to every step that reads the "lowres_sr" view.

  python -m cqd_jax.main --config=configs/cub_sr.py --workdir=/tmp/cub_sr \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config = config_lib.super_resolution(config, "crop")
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 4 (vgg-m; SR: Dong et al.'s ImageNet SRCNN, 56 -> 224 px)",
                      results={"lowres/train_a/a": 67.3, "lowres/train_a/b": 41.0, "lowres/train_b/b": 60.7,
                               "lowres/a_cqd/b": 64.3, "lowres_sr/train_a/b": 52.2, "lowres_sr/train_b/b": 62.2,
                               "lowres_sr/a_cqd/b": 63.6})
  return config
