"""Losses for cross quality distillation: label cross-entropy and teacher-matching terms.

All functions take logits [N, K] and return per-example losses [N] (callers average with a mask), so
padded examples can be excluded and the same code serves training and evaluation.
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


DISTILL_LOSSES: dict[str, DistillLoss] = {
    "soft_ce": soft_cross_entropy,
    "logit_mse": logit_squared_error,
}


def get_distill_loss(name: str) -> DistillLoss:
  """Looks up a teacher-matching loss by the name used in configs (`config.distill.loss`)."""
  if name not in DISTILL_LOSSES:
    raise ValueError(f"config key distill.loss={name!r} is not known; choose one of {sorted(DISTILL_LOSSES)}")
  return DISTILL_LOSSES[name]
