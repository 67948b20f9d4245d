r"""Stanford Cars classes 1-20 (the real sample in ../shared/data/cars_subset) on a 2-core CPU.

As configs/cub_subset.py, with the paper's lambda = 50 for Cars. The sample's images are already cropped to
their box, so only the whole-image degradations apply (the paper uses whole car images for these too):

  python -m cqd_jax.main --config=configs/cars_subset.py:lowres --workdir=/tmp/cars_subset_lowres

  lowres  A = image, B = the image at 36 px (the paper's 50 px at 224), upsampled
  edges   A = image, B = its edge map

T and lambda on the validation split: python -m cqd_jax.tune --config=configs/cars_subset.py:edges
  --workdir=/tmp/tune_cars --grid=kd.temperature=1,2,5,10 --grid=kd.weight=12.5,50 --methods=cqd

"compare" runs the low-resolution comparison (config_lib.cpu_subset_comparison): an ImageNet EfficientNet-Lite2
teacher at 160 px; train_b, cqd and a_cqd (Lite2) on B = the crop at 40 px upsampled to 160; train_b_low, kd,
pixel_distillation(_isr) and horkd on the 40 px crop itself with Lite0 (and a Lite0 assistant on A); it
writes comparison.md beside the results:

  python -m cqd_jax.main --config=configs/cars_subset.py:compare --workdir=/tmp/cars_subset_compare

"multires" runs the paper's multi-resolution model (Table 3, cqd_jax/multires.py) on lowres: train_a, a_cqd and
mixture_ab, then a router on the images' Fourier magnitudes that sends each test image to train_a or a_cqd;
it writes multires.md beside the results:

  python -m cqd_jax.main --config=configs/cars_subset.py:multires --workdir=/tmp/cars_subset_multires
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
  """The CPU experiment on the degradation(s) `arg` names (comma-separated; one teacher serves them all), or
  the low-resolution comparison ("compare"), or the multi-resolution model ("multires")."""
  # 441 train images after the 10% validation split (55 images) of the 496 official ones.
  config = config_lib.cpu_subset_base("cars_paired", os.path.normpath(SAMPLE), distill_weight=50.0, epochs=8)
  if arg == "compare":
    return config_lib.cpu_subset_comparison(config, DEGRADATIONS["lowres"])
  if arg == "multires":  # the experts, the A+B model and the router's settings (cqd_jax/multires.py)
    config.degradations = {"lowres": DEGRADATIONS["lowres"]}
    config.methods = ("train_a", "a_cqd", "mixture_ab")
    config.multires = dict(degradation="lowres", high="train_a", low="a_cqd", mixture="mixture_ab", steps=300,
                           learning_rate=0.01, l2=1e-4)
    return config
  config.degradations = config_lib.pick_degradations(arg, DEGRADATIONS, "configs/cars_subset.py")
  return config
