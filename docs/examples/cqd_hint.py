"""Config: configs/demo.py plus the method `cqd_hint`, defined as data in config.method_defs (no code)."""

import ml_collections

from cqd_jax.configs import demo


def get_config(arg: str = "lowres,localize") -> ml_collections.ConfigDict:
  """The demo config of `arg` (its degradations), running train_a, train_b, cqd and cqd_hint."""
  config = demo.get_config(arg)
  config.method_defs.cqd_hint = dict(
      streams={"student": dict(view="b", trained=True),  # the network trained, on view B
               "teacher": dict(view="a", source="train_a")},  # frozen: what train_a trained, on view A
      terms=(dict(loss="ce", inputs=("student.logits", "label")),
             dict(loss="kd", inputs=("student.logits", "teacher.logits"), weight=50.0, temperature=10.0),
             # FitNets-style hint: the student's pooled features regress the teacher's (same architecture).
             dict(loss="feature_mse", inputs=("student.features.pre_logits", "teacher.features.pre_logits"),
                  weight=1.0, metric="hint")),
      description="CQD plus an L2 hint from the teacher's pooled features")
  config.methods = ("train_a", "train_b", "cqd", "cqd_hint")
  return config
