r"""CUB-200-2011, model compression with CQD (the paper's Table 2): localised (A = box crop) -> non-localised
(B = whole image), a deep network (the paper's vgg-vd) and a shallow one (vgg-m), T = 10 and lambda = 50 (the
paper's choice on validation for this setting).

Rows of compression.md, f -> g: shallow -> shallow (train_a_small on A, train_b_small on B, cqd_small),
deep -> shallow (cqd_to_small: the deep A model distilled into the shallow network on B) and deep -> deep
(train_a, train_b, cqd); config.paper holds the paper's numbers, which `python -m cqd_jax.report` puts beside
ours.

  python -m data_prep.build --dataset=cub_paired --manual_dir=/path/to/archives --data_dir=~/tensorflow_datasets
  python -m cqd_jax.main --config=configs/cub_compression.py --workdir=/tmp/cub_compression \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/vgg16.safetensors \
      --config.small_model.init_from=/path/to/vgg_m.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=50.0)
  config.degradations = {"localization": {"a": "crop", "b": "full"}}
  config = config_lib.compression(config, "localization", deep=dict(name="vgg16", options={}, init_from=""),
                                  small=dict(name="vgg_m", options={}, init_from=""))
  config.paper = dict(source="Su & Maji, Table 2 (vgg-vd deep, vgg-m shallow, ImageNet-initialised)", results={
      "localization/train_a_small/a": 67.3, "localization/train_b_small/b": 60.2, "localization/cqd_small/b": 63.4,
      "localization/cqd_to_small/b": 64.6,
      "localization/train_a/a": 74.9, "localization/train_b/b": 69.5, "localization/cqd/b": 72.4})
  return config
