"""Tests for cqd_jax.losses against hand computations in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax import losses


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  shifted = x - x.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
  return np.exp(_log_softmax(x))


def _logits(seed: int, n: int = 5, k: int = 7, scale: float = 3.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).standard_normal((n, k))).astype(np.float32)


def test_cross_entropy_matches_hand_computation():
  logits = _logits(0)
  labels = np.array([0, 6, 3, 3, 1], np.int32)
  expected = -_log_softmax(logits)[np.arange(5), labels]
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert got.shape == (5,)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # A tiny case written out: logits (0, log 3) -> p = (1/4, 3/4).
  small = losses.cross_entropy(jnp.array([[0.0, np.log(3.0)]]), jnp.array([0]))
  np.testing.assert_allclose(small, [np.log(4.0)], rtol=1e-6)


def test_cross_entropy_is_per_example_and_casts_bfloat16():
  logits = _logits(1)
  labels = np.array([1, 2, 3, 4, 5], np.int32)
  got = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  expected = -_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32)))
  np.testing.assert_allclose(got, expected[np.arange(5), labels], rtol=1e-5, atol=1e-5)


def test_soft_cross_entropy_at_t1_is_ce_against_teacher_probabilities():
  student, teacher = _logits(2), _logits(3)
  expected = -(_softmax(teacher) * _log_softmax(student)).sum(-1)
  got = losses.soft_cross_entropy(jnp.asarray(student), jnp.asarray(teacher), temperature=1.0)
  assert got.shape == (5,)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Not symmetric: the teacher gives the targets, the student the log-probabilities.
  swapped = losses.soft_cross_entropy(jnp.asarray(teacher), jnp.asarray(student), temperature=1.0)
  assert not np.allclose(got, swapped, rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_cross_entropy_at_temperature_matches_hand_computation(temperature):
  student, teacher = _logits(4), _logits(5)
  expected = -(_softmax(teacher / temperature) * _log_softmax(student / temperature)).sum(-1)
  got = losses.soft_cross_entropy(jnp.asarray(student), jnp.asarray(teacher), temperature=temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0])
def test_identical_logits_minimise_soft_cross_entropy(temperature):
  teacher = jnp.asarray(_logits(6))
  loss = lambda s: losses.soft_cross_entropy(s, teacher, temperature=temperature).sum()
  grad = jax.grad(loss)(teacher)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  at_min = loss(teacher)
  # Its value there is the teacher's entropy at temperature T.
  p = _softmax(np.asarray(teacher) / temperature)
  np.testing.assert_allclose(at_min, -(p * np.log(p)).sum(), rtol=1e-5)
  rng = np.random.default_rng(7)
  for _ in range(10):
    perturbed = teacher + jnp.asarray(rng.standard_normal(teacher.shape), jnp.float32)
    assert loss(perturbed) > at_min + 1e-6
  # A constant shift of a row's logits leaves its softmax, and so the loss, unchanged.
  np.testing.assert_allclose(loss(teacher + 5.0), at_min, rtol=1e-5)


def test_t2_scale_multiplies_by_temperature_squared():
  student, teacher = jnp.asarray(_logits(8)), jnp.asarray(_logits(9))
  for temperature in (1.0, 2.5, 10.0):
    plain = losses.soft_cross_entropy(student, teacher, temperature=temperature)
    scaled = losses.soft_cross_entropy(student, teacher, temperature=temperature, t2_scale=True)
    np.testing.assert_allclose(scaled, plain * temperature**2, rtol=1e-5)
  assert not np.allclose(losses.soft_cross_entropy(student, teacher, temperature=2.5, t2_scale=True),
                         losses.soft_cross_entropy(student, teacher, temperature=2.5))


def test_high_temperature_flattens_targets_towards_log_k():
  k = 7
  student, teacher = jnp.asarray(_logits(10, k=k, scale=5.0)), jnp.asarray(_logits(11, k=k, scale=5.0))
  low_t = losses.soft_cross_entropy(student, teacher, temperature=1.0)
  high_t = losses.soft_cross_entropy(student, teacher, temperature=1e4)
  np.testing.assert_allclose(high_t, np.log(k), rtol=1e-3)
  assert np.all(np.abs(np.asarray(low_t) - np.log(k)) > 1e-2)
  # Monotone approach for these logits.
  mid_t = losses.soft_cross_entropy(student, teacher, temperature=20.0)
  assert np.all(np.abs(np.asarray(mid_t) - np.log(k)) < np.abs(np.asarray(low_t) - np.log(k)))


def test_logit_squared_error_matches_hand_computation():
  student = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
  teacher = np.array([[1.0, 0.0, 6.0], [1.0, -1.0, 2.0]], np.float32)
  expected = np.array([(0 + 4 + 9) / 3, (1 + 1 + 4) / 3])
  got = losses.logit_squared_error(jnp.asarray(student), jnp.asarray(teacher))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # temperature and t2_scale are accepted but do not apply.
  np.testing.assert_allclose(
      losses.logit_squared_error(jnp.asarray(student), jnp.asarray(teacher), temperature=5.0, t2_scale=True),
      expected, rtol=1e-6)


def _huber(x: np.ndarray) -> np.ndarray:
  return np.where(np.abs(x) <= 1.0, 0.5 * x**2, np.abs(x) - 0.5)


def _rkd_numpy(student: np.ndarray, teacher: np.ndarray) -> tuple[float, float]:
  """RKD's distance and angle losses written out with loops (Park et al. 2019): mean Huber over the pairs
  i != j of distances over their mean, and over the triplets with i, k != j of the cosine at vertex j."""
  n = len(student)
  def distances(e):
    d = {(i, j): np.linalg.norm(e[i] - e[j]) for i in range(n) for j in range(n) if i != j}
    mean = np.mean(list(d.values()))
    return {k: v / mean for k, v in d.items()}
  def cosines(e):
    out = {}
    for j in range(n):
      for i in range(n):
        for k in range(n):
          if i != j and k != j:
            a, b = e[i] - e[j], e[k] - e[j]
            out[j, i, k] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return out
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  ds, dt = distances(s), distances(t)
  cs, ct = cosines(s), cosines(t)
  return (np.mean([_huber(ds[k] - dt[k]) for k in ds]), np.mean([_huber(cs[k] - ct[k]) for k in cs]))


RKD = {"rkd_distance": 0, "rkd_angle": 1}


@pytest.mark.parametrize("name", list(RKD))
def test_rkd_losses_match_their_definition(name):
  student, teacher = _logits(20, n=6, k=5), _logits(21, n=6, k=5, scale=0.7)
  got = losses.get_distill_loss(name)(jnp.asarray(student), jnp.asarray(teacher), temperature=3.0)
  assert got.shape == (6,)
  np.testing.assert_allclose(float(jnp.mean(got)), _rkd_numpy(student, teacher)[RKD[name]], rtol=1e-5)


@pytest.mark.parametrize("name", list(RKD))
def test_rkd_losses_are_relational(name):
  """Invariant to a global scale of either side's embeddings, zero when both sides are the same, and with
  finite gradients when a batch holds the same embedding twice."""
  loss = losses.get_distill_loss(name)
  student, teacher = jnp.asarray(_logits(22, n=8, k=6)), jnp.asarray(_logits(23, n=8, k=6))
  base = loss(student, teacher)
  assert float(jnp.mean(base)) > 1e-3
  np.testing.assert_allclose(loss(10.0 * student, 0.1 * teacher), base, rtol=1e-5, atol=1e-7)
  assert float(jnp.max(jnp.abs(loss(student, student)))) < 1e-7
  assert float(jnp.max(jnp.abs(loss(student, 3.0 * student)))) < 1e-6
  duplicated = student.at[3].set(student[1])
  value, grad = jax.value_and_grad(lambda s: jnp.mean(loss(s, teacher.at[3].set(teacher[1]))))(duplicated)
  assert np.isfinite(float(value)) and np.all(np.isfinite(grad)) and float(jnp.max(jnp.abs(grad))) > 0


def test_get_distill_loss():
  assert losses.get_distill_loss("soft_ce") is losses.soft_cross_entropy
  assert losses.get_distill_loss("logit_mse") is losses.logit_squared_error
  assert losses.get_distill_loss("rkd_angle") is losses.rkd_angle
  with pytest.raises(ValueError, match=r"kd\.loss") as info:
    losses.get_distill_loss("kl_divergence")
  assert "kl_divergence" in str(info.value)
