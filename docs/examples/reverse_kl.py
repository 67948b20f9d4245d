"""Plugin: registers the distillation loss `reverse_kl`, KL(softmax(g/T) || softmax(f/T))."""

import jax
import jax.numpy as jnp

from cqd_jax import losses


def reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float,
               t2_scale: bool = False) -> jax.Array:
  """Per-example KL from the student's softened prediction to the teacher's.

  Mode-seeking: the student is pushed to put its mass where the teacher's is, not to cover all of it, unlike
  soft_ce (the forward KL plus the teacher's entropy). Only the trained stream gets gradients.
  """
  log_g = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_f = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  loss = jnp.sum(jnp.exp(log_g) * (log_g - log_f), axis=-1)
  return loss * temperature**2 if t2_scale else loss


losses.DISTILL_LOSSES["reverse_kl"] = reverse_kl  # config.kd.loss: the KD term of cqd, a_cqd, kd, ...
losses.TERMS["reverse_kl"] = reverse_kl  # a term's loss in config.method_defs
