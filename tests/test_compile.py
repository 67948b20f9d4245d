"""A stage compiles its train step once and its evaluation once: every batch has the same shapes and dtypes,
so a recompilation (a changed static argument, a weakly typed scalar, a host-side shape change) is a bug that
costs seconds to minutes per step on real models. Read off the shared tiny run (conftest.tiny_run: stages
train_a@crop, lowres/train_b, lowres/cqd; validation at steps 2 and 4, evaluation after each stage)."""


def test_each_stage_compiles_its_step_and_evaluation_once(tiny_run):
  assert len(tiny_run.train_steps) == 3  # one step function per stage
  assert [fn._cache_size() for fn in tiny_run.train_steps] == [1, 1, 1]  # pylint: disable=protected-access
  # Evaluation functions are made once per (model, input size, view A, view B) and reused by every stage and
  # split: (crop, crop) for the teacher's validation, (crop, crop+lowres) for its result and for both students
  # (one architecture here, so one function).
  assert len(tiny_run.eval_steps) == 2
  assert [fn._cache_size() for fn in tiny_run.eval_steps] == [1, 1]  # pylint: disable=protected-access
