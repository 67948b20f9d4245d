r"""Demo: students that read low-resolution images as they are, taught by a teacher at full resolution.

The demo's birds. Domain A is the object crop at the teacher's size (default 32 px); domain B the same crop
at the students' size (default 8 px, the demo's lowres), which the students read without upsampling back,
so they cost (32/8)^2 = 16 times fewer FLOPs than the teacher. The teacher (train_a) is also tested on B
upsampled to its size (32 -> 8 -> 32, the demo's lowres). Methods, beyond train_a:
    small       the low-resolution student trained on labels alone
    small_cqd   plus cross quality distillation from the teacher's logits on A
    small_hint  plus a feature term: the student's last map, through a trainable pixel-shuffle adapter,
                matches the teacher's 4x larger one (FitNets' hint, across resolutions)

  python -m cqd_jax.main --config=configs/demo_small_student.py --workdir=/tmp/cqd_small_student
  python -m cqd_jax.main --config=configs/demo_small_student.py:64,16 --workdir=/tmp/cqd_small_64_16

The argument is "<teacher px>,<student px>".
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


def get_config(arg: str = "32,8") -> ml_collections.ConfigDict:
  """The demo's data, model and optimizer; the teacher at the first size of `arg`, students at the second."""
  try:
    teacher_px, student_px = (int(v) for v in arg.split(","))
  except ValueError:
    raise ValueError(f"configs/demo_small_student.py: expected '<teacher px>,<student px>', got {arg!r}") from None
  config = _demo()
  config.image_size = teacher_px  # the teacher's input; the students' streams give their own
  config.degradations = {"lowres": {"a": "crop", "b": "crop+lowres"}}
  config.degrade_params = {"lowres": {"low": student_px}, "distort": {"grid": 14, "variance": 16.0}}
  student = dict(view="b", trained=True, image_size=student_px)
  teacher = dict(view="a", source="train_a")  # frozen: the network train_a trained
  ce = dict(loss="ce", inputs=("student.logits", "label"))
  kd = dict(loss="kd", inputs=("student.logits", "teacher.logits"), weight=50.0, temperature=10.0)
  hint = dict(loss="feature_mse", inputs=("student.features.stage4", "teacher.features.stage4"), weight=1.0,
              adapter="pixel_shuffle")
  config.method_defs = {
      "small": dict(streams={"student": student}, terms=(ce,), description="low-resolution student, labels only"),
      "small_cqd": dict(streams={"student": student, "teacher": teacher}, terms=(ce, kd),
                        description="low-resolution student, CQD from the teacher"),
      "small_hint": dict(streams={"student": student, "teacher": teacher}, terms=(ce, kd, hint),
                         description="small_cqd plus the teacher's last feature map through an adapter"),
  }
  config.methods = ("train_a", "small", "small_cqd", "small_hint")
  return config
