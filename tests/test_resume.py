"""A stage interrupted after a checkpoint resumes to exactly the parameters of an uninterrupted run."""

import os
import shutil

import jax
import numpy as np

from cqd_jax import experiment

import helpers


def test_resume_after_interruption_is_bit_exact(tmp_path, capsys):
  config = helpers.tiny_experiment_config()
  workdir = str(tmp_path / "w")
  data = experiment.prepare_data(config, workdir)
  runner = experiment.Runner(config, workdir, data)
  teacher, student = experiment.plan(config)[0], experiment.plan(config)[2]  # train_a, lowres/a_then_b
  assert student.name == "lowres/a_then_b"
  teacher_vars, _ = runner.train(teacher, None)
  full, _ = runner.train(student, teacher_vars)

  # Simulate a kill after the step-2 checkpoint: drop the final step, train again.
  ckpt_dir = os.path.join(runner.stage_dir(student), "checkpoints")
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]
  shutil.rmtree(os.path.join(ckpt_dir, "4"))
  step2 = runner.final_variables(student)  # differs from the end result, so the check below is not vacuous
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(step2)))
  capsys.readouterr()
  resumed, _ = runner.train(student, teacher_vars)

  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert "lowres/a_then_b: resuming from step 2" in capsys.readouterr().err
