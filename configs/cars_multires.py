r"""Stanford Cars, the paper's multi-resolution model (Sec. 2.3, Table 3): train_a (A, the whole image at 224 px)
and a_cqd (A,CQD, B = 224 -> 50 -> 224 px) as experts, a linear router on the images' 65 x 65 log Fourier
magnitudes sending each test image to one of them, and mixture_ab (A+B, trained on both) for comparison;
multires.md gives the accuracy of each on A, on B and on both test sets merged (cqd_jax/multires.py).

Target, the paper's Table 3 (vgg-m, ImageNet-initialised; top-1 % on the official test split; the router right
on over 99.5 % of the test images):
  model       test on A | test on B | test on A+B
  A             58.8    |    7.6    |    33.2
  A,CQD         31.8    |   48.9    |    40.3
  A+B           57.3    |   46.8    |    52.0
  multi-res       -     |     -     |    53.8
  oracle        58.8    |   48.9    |    53.9

  python -m data_prep.build --dataset=cars_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cars_multires.py --workdir=/tmp/cars_multires \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cars_paired", distill_weight=50.0)
  config.degradations = {"lowres": {"a": "full", "b": "full+lowres"}}
  config.methods = ("train_a", "a_cqd", "mixture_ab")
  # The experts of view A (high) and of view B (low), the A+B model shown beside them, and the router's
  # full-batch Adam steps, step size and L2 weight (cqd_jax/multires.py).
  config.multires = dict(degradation="lowres", high="train_a", low="a_cqd", mixture="mixture_ab", steps=300,
                         learning_rate=0.01, l2=1e-4)
  # The paper's top-1 accuracy (%) on the test split by "<degradation>/<method>/<test view>" (cqd_jax.report).
  config.paper = dict(source="Su & Maji, Table 3 (vgg-m, ImageNet-initialised)",
                      results={"lowres/train_a/a": 58.8, "lowres/train_a/b": 7.6, "lowres/a_cqd/a": 31.8,
                               "lowres/a_cqd/b": 48.9, "lowres/mixture_ab/a": 57.3, "lowres/mixture_ab/b": 46.8})
  return config
