r"""Stanford Cars classes 1-20 (the real sample in ../shared/data/cars_subset) on a 2-core CPU.

As configs/cub_subset.py, with the paper's lambda = 50 for Cars. The sample's images are already cropped to
their box, so only the whole-image degradations apply (the paper uses whole car images for these too):

  python -m cqd_jax.main --config=configs/cars_subset.py:lowres --workdir=/tmp/cars_subset_lowres

  lowres  A = image, B = the image at 36 px (the paper's 50 px at 224), upsampled
  edges   A = image, B = its edge map

T and lambda on the validation split: python -m cqd_jax.tune --config=configs/cars_subset.py:edges
  --workdir=/tmp/tune_cars --grid=kd.temperature=1,2,5,10 --grid=kd.weight=12.5,50 --methods=cqd
"""

import os

import ml_collections

from cqd_jax import config_lib

DEGRADATIONS = {
    "lowres": {"a": "full", "b": "full+lowres"},
    "edges": {"a": "full", "b": "full+edges"},
}
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cars_subset")


def get_config(arg: str = "lowres") -> ml_collections.ConfigDict:
  """The CPU experiment on the degradation(s) `arg` names (comma-separated; one teacher serves them all)."""
  # 441 train images after the 10% validation split (55 images) of the 496 official ones.
  config = config_lib.cpu_subset_base("cars_paired", os.path.normpath(SAMPLE), train_images=441,
                                      distill_weight=50.0, epochs=8)
  config.degradations = config_lib.pick_degradations(arg, DEGRADATIONS, "configs/cars_subset.py")
  return config
