r"""CUB-200-2011 at low resolution, every method side by side: the Table 1 baselines against the students that
read the low-resolution image itself.

A is the box crop at 224 px; B that crop at 56 px (Pixel Distillation's ratio 4; the CQD paper's 50 px is
close). train_a is the teacher (ResNet-50, tested on A and B); train_b, cqd and a_cqd are ResNet-50 on B
upsampled back to 224 px as in Table 1; train_b_low, kd, pixel_distillation (with its ResNet-18 assistant on
A), pixel_distillation_isr and horkd are ResNet-18 on the 56 px crop itself (about 1/36 of the teacher's
FLOPs). comparison.md lists each deployed model's accuracy on B, parameters, FLOPs and images/s.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_lowres_compare.py --workdir=/tmp/cub_lowres_compare \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors \
      --config.small_model.init_from=/path/to/resnet18.safetensors

The CQD protocol (config_lib.paper_base: SGD, lr 1e-3 -> 5e-5, batch 128, 30 epochs, T = 10 and lambda = 200
for cqd, a_cqd and kd) trains every method; the Pixel Distillation and HORKD terms take their sections
(pd, pd_isr, horkd; methods.DEFAULTS). The weight files come from data_prep/convert_weights.py.
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  return config_lib.comparison(config, {"a": "crop", "b": "crop+lowres"},
                               small_model=dict(name="resnet18", options={}, init_from=""))
