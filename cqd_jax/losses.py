"""Losses for cross quality distillation: label cross-entropy and teacher-matching terms.

All functions take logits [N, K] and return per-example losses [N] (callers average with a mask), so
padded examples can be excluded and the same code serves training and evaluation. The relational losses
(RKD, Park et al. 2019) compare the structure of the whole batch; their per-example values are example i's
share, so that their mean is the loss over every pair or triplet.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

DistillLoss = Callable[..., jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy against integer labels: the paper's L1(g(z), y)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float,
                       t2_scale: bool = False) -> jax.Array:
  """CE(softmax(f/T), softmax(g/T)): the paper's L2, Hinton-style distillation at temperature T.

  With `t2_scale` the loss is multiplied by T^2 (Hinton et al.), which keeps gradient magnitudes roughly
  independent of T; the CQD paper does not scale, so its lambda (200 CUB, 50 Cars) absorbs that factor.
  """
  targets = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
  loss = optax.softmax_cross_entropy(student_logits.astype(jnp.float32) / temperature, targets)
  return loss * temperature**2 if t2_scale else loss


def logit_squared_error(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0,
                        t2_scale: bool = False) -> jax.Array:
  """Mean squared difference between logits (Ba & Caruana); the paper found it works like soft CE.

  `temperature` and `t2_scale` are accepted so every distillation loss has one signature; they do not apply.
  """
  del temperature, t2_scale
  diff = student_logits.astype(jnp.float32) - teacher_logits.astype(jnp.float32)
  return jnp.mean(diff**2, axis=-1)


# Distances and norms below this are treated as this: a batch with duplicate embeddings (two flips of one
# image, say) keeps finite gradients, where the gradient of a norm at 0 is not.
_EPS = 1e-12


def _safe_norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), _EPS))


def _distance_structure(e: jax.Array) -> jax.Array:
  """[N, N] pairwise Euclidean distances divided by their mean over the pairs i != j (RKD's psi_D)."""
  e = e.astype(jnp.float32).reshape(e.shape[0], -1)
  n = e.shape[0]
  off_diagonal = ~jnp.eye(n, dtype=bool)
  d = jnp.where(off_diagonal, _safe_norm(e[:, None] - e[None, :]), 0.0)
  return d / jnp.maximum(jnp.sum(d) / (n * (n - 1)), _EPS)


def _angle_structure(e: jax.Array) -> jax.Array:
  """[N, N, N] cosines of the angle at vertex j between i and k, cos(e_i e_j e_k) (RKD's psi_A), indexed
  [j, i, k]."""
  e = e.astype(jnp.float32).reshape(e.shape[0], -1)
  diff = e[None, :] - e[:, None]  # [j, i] = e_i - e_j
  unit = diff / _safe_norm(diff)[..., None]
  return jnp.einsum("jid,jkd->jik", unit, unit)


def rkd_distance(student: jax.Array, teacher: jax.Array, *, temperature: float = 1.0,
                 t2_scale: bool = False) -> jax.Array:
  """RKD distance loss: Huber (delta 1) between the two batches' mean-normalised pairwise distances; invariant
  to a global scale of either side. Per example: the mean over its pairs. `temperature` and `t2_scale` do
  not apply (accepted for one signature)."""
  del temperature, t2_scale
  n = student.shape[0]
  huber = optax.huber_loss(_distance_structure(student), _distance_structure(teacher), delta=1.0)
  return jnp.sum(huber, axis=1) / max(n - 1, 1)  # the diagonal is 0 on both sides


def rkd_angle(student: jax.Array, teacher: jax.Array, *, temperature: float = 1.0,
              t2_scale: bool = False) -> jax.Array:
  """RKD angle loss: Huber (delta 1) between the cosines of every triplet's angle in the two batches; scale
  invariant. Per example: the mean over the triplets whose vertex it is (i, k != it). `temperature` and
  `t2_scale` do not apply (accepted for one signature)."""
  del temperature, t2_scale
  n = student.shape[0]
  huber = optax.huber_loss(_angle_structure(student), _angle_structure(teacher), delta=1.0)
  others = ~jnp.eye(n, dtype=bool)
  valid = others[:, :, None] & others[:, None, :]  # i != j and k != j; i == k gives cosine 1 on both sides
  return jnp.sum(jnp.where(valid, huber, 0.0), axis=(1, 2)) / max((n - 1) ** 2, 1)


DISTILL_LOSSES: dict[str, DistillLoss] = {
    "soft_ce": soft_cross_entropy,
    "logit_mse": logit_squared_error,
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
}


def get_distill_loss(name: str) -> DistillLoss:
  """Looks up a teacher-matching loss by the name used in configs (`config.kd.loss`)."""
  if name not in DISTILL_LOSSES:
    raise ValueError(f"config key kd.loss={name!r} is not known; choose one of {sorted(DISTILL_LOSSES)}")
  return DISTILL_LOSSES[name]


def kd(student_logits: jax.Array, teacher_logits: jax.Array, *, loss: str = "soft_ce", temperature: float = 1.0,
       t2_scale: bool = False) -> jax.Array:
  """The distillation term of the built-in methods: DISTILL_LOSSES[loss] at `temperature` (config.kd)."""
  return get_distill_loss(loss)(student_logits, teacher_logits, temperature=temperature, t2_scale=t2_scale)


FEATURE_NORMS = {"l2": jnp.square, "l1": jnp.abs}


def feature_distance(student: jax.Array, target: jax.Array, *, norm: str = "l2") -> jax.Array:
  """Mean squared ("l2", FitNets' hint loss) or absolute ("l1") difference between two features (or images)
  of the same shape, per example."""
  if norm not in FEATURE_NORMS:
    raise ValueError(f"norm={norm!r}: known: {', '.join(FEATURE_NORMS)}")
  diff = student.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(FEATURE_NORMS[norm](diff.reshape(diff.shape[0], -1)), axis=-1)


def feature_mse(student: jax.Array, target: jax.Array) -> jax.Array:
  """feature_distance with the L2 norm."""
  return feature_distance(student, target, norm="l2")


# The loss functions a method's terms name (methods.Term.loss): per-example losses of the outputs they compare.
TERMS: dict[str, Callable[..., jax.Array]] = {
    "ce": cross_entropy,
    "kd": kd,
    "soft_ce": soft_cross_entropy,
    "logit_mse": logit_squared_error,
    "feature_mse": feature_mse,
    "feature_distance": feature_distance,
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
}
# Terms that compare the structure of a batch (N x N distances, angles), so their inputs may differ in shape.
SHAPE_FREE = frozenset({"rkd_distance", "rkd_angle"})
