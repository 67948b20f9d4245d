"""cqd-jax: Cross Quality Distillation and related distillation methods in JAX/Flax."""

__version__ = "0.1.0"
