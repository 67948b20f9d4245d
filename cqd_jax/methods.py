"""The training methods of the CQD paper, as data: which view the student sees, where it starts, and
whether it matches the teacher. A config names methods; `get_method` looks them up.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of training a model for domain B (or A, for the teacher itself)."""

  student_input: str  # "a": high-quality view, "b": degraded view, "ab": each example randomly one of the two
  init_from_teacher: bool  # start from the trained domain-A model instead of the config's initialisation
  distill: bool  # add lambda * L2(g(z), f(x)) with the frozen teacher f on the paired high-quality view
  description: str

  @property
  def needs_teacher(self) -> bool:
    return self.init_from_teacher or self.distill


METHODS: dict[str, Method] = {
    "train_a": Method("a", False, False, "train on A (the teacher f); tested on A and on B"),
    "train_b": Method("b", False, False, "train on B only"),
    "a_then_b": Method("b", True, False, "train on A, then fine-tune on B (the paper's A,B)"),
    "cqd": Method("b", False, True, "cross quality distillation from the A model"),
    "a_cqd": Method("b", True, True, "CQD with the student initialised from the A model (A,CQD)"),
    "mixture_ab": Method("ab", False, False, "train on A and B together (the paper's A+B)"),
}

TEACHER_METHOD = "train_a"


def get_method(name: str) -> Method:
  """Looks up a method by the name used in `config.methods`."""
  if name not in METHODS:
    raise ValueError(f"config key methods: unknown method {name!r}; known: {', '.join(METHODS)}")
  return METHODS[name]
