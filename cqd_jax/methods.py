"""The training methods, as data: the networks a train step runs (streams) and the weighted loss terms over
their outputs. A config names methods; `get_method` looks them up, and train.train_step runs any of them.

A stream reads one view of the paired batch ("a": the high-quality view, "b": the degraded one, "ab": each
example randomly one of the two) and is either the network being trained ("student") or a frozen one
("teacher": the trained domain-A model, in evaluation mode, no gradient). A term names a loss in
losses.TERMS, the outputs it compares ("student.logits", "teacher.logits", "label"), its weight (a number,
or a key of its config section, config.distill.weight for KD) and the name its batch mean gets in the
step's metrics.
"""

from __future__ import annotations

import dataclasses
VIEWS = ("a", "b", "ab")


@dataclasses.dataclass(frozen=True)
class Stream:
  """A network the train step runs on one view of the batch."""

  view: str  # one of VIEWS
  trained: bool = False  # the network being trained (exactly one per method), else frozen


@dataclasses.dataclass(frozen=True)
class Term:
  """weight * mean over the batch of losses.TERMS[loss](*inputs, **options), options being the keys of the
  config section `options` (config.distill for KD) other than the weight."""

  loss: str
  inputs: tuple[str, ...]  # "<stream>.logits" or "label"
  metric: str  # the term's name in the step's metrics
  weight: float | str = 1.0  # a number, or the key of the `options` section that holds it
  options: str | None = None  # the config section with the term's options ("distill")


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of training a model for domain B (or A, for the teacher itself)."""

  streams: tuple[tuple[str, Stream], ...]  # (name, stream) pairs: hashable, so a method can key a cache
  terms: tuple[Term, ...]
  init_from_teacher: bool  # start from the trained domain-A model instead of the config's initialisation
  description: str

  @property
  def student(self) -> str:
    """The name of the trained stream."""
    return next(name for name, s in self.streams if s.trained)

  @property
  def frozen(self) -> tuple[str, ...]:
    return tuple(name for name, s in self.streams if not s.trained)

  def stream(self, name: str) -> Stream:
    return dict(self.streams)[name]

  @property
  def student_input(self) -> str:
    return self.stream(self.student).view

  @property
  def distill(self) -> bool:
    """Whether the step runs the frozen teacher (or reads its cached logits)."""
    return bool(self.frozen)

  @property
  def needs_teacher(self) -> bool:
    return self.init_from_teacher or self.distill


CE = Term("ce", ("student.logits", "label"), "ce")
KD = Term("kd", ("student.logits", "teacher.logits"), "distill", weight="weight", options="distill")
TEACHER_ON_A = ("teacher", Stream("a"))

METHODS: dict[str, Method] = {
    "train_a": Method((("student", Stream("a", trained=True)),), (CE,), False,
                      "train on A (the teacher f); tested on A and on B"),
    "train_b": Method((("student", Stream("b", trained=True)),), (CE,), False, "train on B only"),
    "a_then_b": Method((("student", Stream("b", trained=True)),), (CE,), True,
                       "train on A, then fine-tune on B (the paper's A,B)"),
    "cqd": Method((("student", Stream("b", trained=True)), TEACHER_ON_A), (CE, KD), False,
                  "cross quality distillation from the A model"),
    "a_cqd": Method((("student", Stream("b", trained=True)), TEACHER_ON_A), (CE, KD), True,
                    "CQD with the student initialised from the A model (A,CQD)"),
    "mixture_ab": Method((("student", Stream("ab", trained=True)),), (CE,), False,
                         "train on A and B together (the paper's A+B)"),
}

TEACHER_METHOD = "train_a"


def get_method(name: str) -> Method:
  """Looks up a method by the name used in `config.methods`."""
  if name not in METHODS:
    raise ValueError(f"config key methods: unknown method {name!r}; known: {', '.join(METHODS)}")
  return METHODS[name]
