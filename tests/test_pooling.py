"""Tests for cqd_jax.models.pooling: the "shift" max pooling against flax's nn.max_pool (XLA's reduce_window).

Inputs are small integers (many ties, as after a ReLU) and so are the output gradients, so every sum is exact
and forward and backward must agree bitwise: the same maximum, and the gradient sent to the same input (the
first maximum of each window in row-major order).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax.models.pooling import max_pool

XLA_OPTIMIZED = True  # bitwise equal to XLA's compiled reduce_window

# (window, strides, padding, height, width): ResNet's stem pool, VGG-M's SAME pools, the 2x2 pools; odd sizes.
CASES = [
    (3, 2, ((1, 1), (1, 1)), 8, 8), (3, 2, ((1, 1), (1, 1)), 9, 7), (3, 2, "SAME", 8, 8), (3, 2, "SAME", 13, 13),
    (2, 2, "VALID", 8, 8), (2, 2, "VALID", 7, 9), (3, 1, "SAME", 5, 6), (3, 3, "VALID", 9, 10),
]


def _ints(seed, shape, high):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.float32)


@pytest.mark.parametrize("window,strides,padding,h,w", CASES)
def test_shift_equals_flax_forward_and_backward(window, strides, padding, h, w):
  x = _ints(0, (2, h, w, 3), 4)  # values 0..3: most windows hold ties
  ref = lambda x: nn.max_pool(x, (window, window), strides=(strides, strides), padding=padding)
  want, want_vjp = jax.vjp(ref, x)
  for impl in ("shift", "lax"):
    got, got_vjp = jax.vjp(lambda x, impl=impl: max_pool(x, window, strides, padding, impl), x)
    np.testing.assert_array_equal(got, want, err_msg=impl)
    g = _ints(1, want.shape, 5) - 2
    np.testing.assert_array_equal(got_vjp(g)[0], want_vjp(g)[0], err_msg=impl)
    jitted = jax.jit(jax.grad(lambda x, impl=impl: jnp.sum(max_pool(x, window, strides, padding, impl) * g)))
    np.testing.assert_array_equal(jitted(x), want_vjp(g)[0], err_msg=impl)


def test_bfloat16_and_negative_inputs():
  x = -_ints(2, (1, 9, 9, 4), 7).astype(jnp.bfloat16)  # all <= 0: padding must be -inf, not 0
  ref = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  got = max_pool(x, 3, 2, "SAME", "shift")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got, ref)


def test_auto_avoids_select_and_scatter_on_cpu_and_bad_arguments():
  x = _ints(3, (1, 8, 8, 2), 4)
  grad = lambda impl: jax.jit(jax.grad(lambda x: jnp.sum(max_pool(x, 3, 2, "SAME", impl)))).lower(x).as_text()
  assert "select_and_scatter" in grad("lax")
  if jax.default_backend() == "cpu":
    assert "select_and_scatter" not in grad("auto") and "reduce_window" not in grad("auto")
  with pytest.raises(ValueError, match="impl"):
    max_pool(x, 3, 2, "SAME", "fast")
  with pytest.raises(ValueError, match="window must be a positive int"):
    max_pool(x, 0, 2)
  with pytest.raises(ValueError, match=r"Expected x \[N, H, W, C\]"):
    max_pool(x[0], 3, 2)
  with pytest.raises(ValueError, match="Padding must be"):
    max_pool(x, 3, 2, ((1, 1),))
