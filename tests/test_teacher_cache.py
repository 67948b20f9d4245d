"""config.cache_teacher: the teacher's logits come from a table computed once, and training ends where the
live teacher's run ends (up to float rounding); configs where the teacher's input is not fixed are refused."""

import json

import jax
import numpy as np
import pytest

from cqd_jax import config_lib
from cqd_jax import experiment

import helpers


def test_cached_teacher_trains_like_the_live_teacher(tiny_run, tmp_path, capsys):
  """The shared tiny run's lowres/cqd ran the live teacher; the same stage again with the cached table."""
  config = helpers.tiny_experiment_config()
  stored = json.loads((tiny_run.workdir / "config.json").read_text())
  assert json.loads(config.to_json_best_effort()) == stored  # the in-process config is the run's
  assert "cached the teacher's logits" not in tiny_run.result.stderr
  config.cache_teacher = True
  config_lib.validate(config)
  workdir = str(helpers.copy_run(tiny_run, tmp_path / "cached", drop=("lowres__cqd",)))
  runner = experiment.Runner(config, workdir, experiment.prepare_data(config, workdir))
  teacher, _, student = experiment.plan(config)
  cached, _ = runner.train(student, {teacher.name: runner.final_variables(teacher)})
  assert "lowres/cqd: cached the teacher's logits on 32 training images (both flips)" in capsys.readouterr().err
  live = experiment.Runner(config, str(tiny_run.workdir), runner.data).final_variables(student)  # the original's
  leaves = list(zip(jax.tree.leaves(live), jax.tree.leaves(cached)))
  assert leaves and len(leaves) == len(jax.tree.leaves(live))
  for a, b in leaves:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.augment.update(crop_margin=0.2), r"cache_teacher=True needs augment.crop_margin=0"),
    (lambda c: c.degradations.lowres.update(a="crop+distort"),
     r"needs a deterministic input of stream teacher of cqd, but its view 'a' is 'crop\+distort'"),
])
def test_refused_when_the_teachers_input_varies(change, match):
  config = helpers.tiny_experiment_config()
  config.cache_teacher = True
  change(config)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)
