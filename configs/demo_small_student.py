r"""Demo: a student that reads 16 px images, taught by a teacher that reads 64 px ones.

The demo's birds at 64 px. Domain A is the object crop at 64 px; domain B the same crop at 16 px, which
the students read as it is (no upsampling back), so they cost 16 times fewer FLOPs than the teacher. The
teacher (train_a) is also tested on B upsampled to 64 px (64 -> 16 -> 64). Methods, beyond train_a:
    b16       the 16 px student trained on labels alone
    cqd16     plus cross quality distillation from the teacher's logits on A
    fitnet16  plus a feature term: the student's last 2x2 map, through a trainable pixel-shuffle adapter,
              matches the teacher's 8x8 map (FitNets' hint, across resolutions)

  python -m cqd_jax.main --config=configs/demo_small_student.py --workdir=/tmp/cqd_small_student
"""

import importlib.util
import os

import ml_collections


def _demo() -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
  spec = importlib.util.spec_from_file_location("cqd_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("lowres")


def get_config() -> ml_collections.ConfigDict:
  """The demo's data, model and optimizer; students at 16 px."""
  config = _demo()
  config.image_size = 64  # the teacher's input; the students' streams say 16
  config.degradations = {"lowres16": {"a": "crop", "b": "crop+lowres"}}
  config.degrade_params = {"lowres": {"low": 16}, "distort": {"grid": 14, "variance": 16.0}}
  student = dict(view="b", trained=True, image_size=16)
  teacher = dict(view="a", source="train_a")  # frozen: the network train_a trained
  ce = dict(loss="ce", inputs=("student.logits", "label"))
  kd = dict(loss="kd", inputs=("student.logits", "teacher.logits"), weight=50.0, temperature=10.0)
  hint = dict(loss="feature_mse", inputs=("student.features.stage4", "teacher.features.stage4"), weight=1.0,
              adapter="pixel_shuffle")
  config.method_defs = {
      "b16": dict(streams={"student": student}, terms=(ce,), description="16 px student, labels only"),
      "cqd16": dict(streams={"student": student, "teacher": teacher}, terms=(ce, kd),
                    description="16 px student, CQD from the 64 px teacher"),
      "fitnet16": dict(streams={"student": student, "teacher": teacher}, terms=(ce, kd, hint),
                       description="cqd16 plus the teacher's last feature map through an adapter"),
  }
  config.methods = ("train_a", "b16", "cqd16", "fitnet16")
  return config
