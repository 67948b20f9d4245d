r"""HORKD on CUB-200-2011, 224 -> 56 px: hybrid-order relational knowledge distillation (Ge et al., "Look One
and More", AAAI 2020), as far as its abstract describes it.

From the abstract: three streams, a teacher pretrained on high-resolution images (train_a: ResNet-50 on the
224 px crop), an assistant that bridges teacher and student, and the low-resolution student (ResNet-18 on the
56 px crop itself), supervised by the labels and by losses that keep relational structure of several orders
with both the teacher and the assistant.

Our reading (only the abstract is available), each part a term of methods.METHODS["horkd"] weighted by a key
of the horkd section, so the reading changes by config:
  - zero order: per-example output matching, KD on logits at T = 4 with the T^2 factor (horkd.kd_teacher,
    horkd.kd_assistant; weights 0.45 each beside CE at 0.1, as Pixel Distillation's alpha = 0.9);
  - first order: the batch's pairwise distances of the embeddings (pre_logits), divided by their mean,
    Huber penalty, as in RKD (horkd.distance_*; weight 12.5 per stream, RKD's 25 split in two);
  - second order: the angles of the batch's triplets of embeddings, as in RKD (horkd.angle_*; 25 per stream);
  - the assistant: ResNet-18 trained on the 224 px crop with KD from the teacher (Pixel Distillation's
    assistant, the stage pd_assistant).
A weight of 0 drops its term, and a stream no term reads is not run; with every *_assistant weight at 0 the
assistant stage is not trained at all:

  python -m cqd_jax.main --config=configs/cub_lowres_horkd.py --workdir=/tmp/cub_horkd \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors \
      --config.small_model.init_from=/path/to/resnet18.safetensors
  ... --config.horkd.kd_assistant.weight=0 --config.horkd.distance_assistant.weight=0 \
      --config.horkd.angle_assistant.weight=0      # teacher only

The CQD protocol (config_lib.paper_base) trains it, beside train_b_low (labels only) and kd (zero order from
the teacher alone, T = 10, lambda = 200).
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config = config_lib.comparison(config, {"a": "crop", "b": "crop+lowres"},
                                 small_model=dict(name="resnet18", options={}, init_from=""))
  config.methods = ("train_b_low", "kd", "horkd")
  return config
