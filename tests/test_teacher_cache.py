"""distill.cache_teacher: the teacher's logits come from a table computed once, and training ends where the
live teacher's run ends (up to float rounding); configs where the teacher's input is not fixed are refused."""

import jax
import numpy as np
import pytest

from cqd_jax import config_lib
from cqd_jax import experiment

import helpers


def _cqd_variables(workdir: str, cache: bool):
  config = helpers.tiny_experiment_config()
  config.methods = ("train_a", "cqd")
  config.distill.cache_teacher = cache
  config_lib.validate(config)
  data = experiment.prepare_data(config, workdir)
  runner = experiment.Runner(config, workdir, data)
  teacher, student = experiment.plan(config)
  teacher_vars, _ = runner.train(teacher, None)
  return runner.train(student, teacher_vars)[0]


def test_cached_teacher_trains_like_the_live_teacher(tmp_path, capsys):
  live = _cqd_variables(str(tmp_path / "live"), cache=False)
  assert "cached the teacher's logits" not in capsys.readouterr().err
  cached = _cqd_variables(str(tmp_path / "cached"), cache=True)
  assert "lowres/cqd: cached the teacher's logits on 20 training images (both flips)" in capsys.readouterr().err
  for a, b in zip(jax.tree.leaves(live), jax.tree.leaves(cached)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.augment.update(crop_margin=0.2), r"distill.cache_teacher=True needs augment.crop_margin=0"),
    (lambda c: c.degradations.lowres.update(a="crop+distort"),
     r"needs a deterministic view A, but degradations.lowres.a='crop\+distort' is random"),
])
def test_refused_when_the_teachers_input_varies(change, match):
  config = helpers.tiny_experiment_config()
  config.distill.cache_teacher = True
  change(config)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)
