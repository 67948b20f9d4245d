"""benchmarks/profile.py's reading of compiled HLO: which instructions are convolutions and matmuls."""

import jax
import jax.numpy as jnp

from benchmarks import profile


def test_hlo_kinds_finds_convolutions_and_dots():
  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(y).reshape(2, -1) @ w

  args = (jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((256, 5)))
  kinds, details = profile.hlo_kinds(jax.jit(f).lower(*args).compile().as_text())
  assert "convolution" in kinds.values() and "dot" in kinds.values()
  conv = next(name for name, kind in kinds.items() if kind == "convolution")
  assert "f32[2,8,8,4]" in details[conv]
  assert set(map(profile.jax_bucket, kinds.values())) <= {"convolution", "matmul", "other"}
  assert profile.torch_bucket("aten::convolution_backward") == "convolution"
  assert profile.torch_bucket("aten::addmm") == "matmul"
