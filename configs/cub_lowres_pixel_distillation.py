r"""Pixel Distillation on CUB-200-2011 (Guo et al., arXiv 2112.09532), 224 -> 56 px, with the authors' settings.

  pixel_distillation      teacher (ResNet-50 on the 224 px crop, train_a) -> assistant (ResNet-18 on the
                          224 px crop, KD from the teacher; the stage pd_assistant) -> student (ResNet-18 on
                          the 56 px crop itself): KD from the assistant plus feature super-resolution, a
                          1x1 convolution and pixel shuffle on the student's map trained to match the
                          assistant's (pd.fsr; the stage is the deepest map at least 5x5 at 56 px: layer2,
                          7x7 -> 28x28). The adapter is used in training only.
  pixel_distillation_isr  the one-stage variant of the authors' public code: no assistant; KD from the
                          teacher and the student's stem decoded (1x1 conv to 3*8*8, pixel shuffle by 8,
                          PReLU) into the normalised 224 px image, L1, weight 50 (pd_isr; 10 for ratio 2).
  train_b_low             the same ResNet-18 at 56 px on labels only, the baseline.

Both use (1 - alpha) CE + alpha T^2 KL with alpha = 0.9, T = 4 (pd.ce, pd.kd) and SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 64, here for 30 epochs with a linear decay (our choice). The authors' CUB numbers
pick the best epoch on the test split; here the test split chooses nothing (validation_split picks
checkpoints, cqd_jax.tune the weights).

  python -m cqd_jax.main --config=configs/cub_lowres_pixel_distillation.py --workdir=/tmp/cub_pd \
      --config.dataset.data_dir=~/tensorflow_datasets --config.model.init_from=/path/to/resnet50.safetensors \
      --config.small_model.init_from=/path/to/resnet18.safetensors
"""

from cqd_jax import config_lib


def get_config():
  config = config_lib.paper_base("cub_paired", distill_weight=200.0)
  config = config_lib.comparison(config, {"a": "crop", "b": "crop+lowres"},
                                 small_model=dict(name="resnet18", options={}, init_from=""))
  config.methods = ("train_b_low", "pixel_distillation", "pixel_distillation_isr")
  config.optimizer.update(lr=0.01, end_lr=0.0, momentum=0.9, weight_decay=5e-4)
  config.batch_size = 64
  config.eval_batch_size = 64
  return config
