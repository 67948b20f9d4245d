"""Tests for cqd_jax.models.depthwise: the "shift" depthwise convolution against XLA's grouped convolution.

Tolerance. "shift" and "lax" compute the same sums of products in a different order, so they agree to float
rounding but not bitwise: XLA:CPU runs the grouped convolution in its runtime convolution library (Eigen), which
splits the k*k-term sum into partial accumulators in a shape-dependent way (probed with cancelling inputs:
row-major sequential for some shapes, two 4-term halves plus the rest for others), and XLA's code generator
contracts some, not all, of the shifted multiply-adds into FMAs. No summation order of ours reproduces that for every shape (measured: 28-54% of the
forward outputs below are bitwise equal; 30-100% in a wider sweep). The test therefore uses the standard error
bound of a floating-point sum: |shift - lax| <= ULPS * eps32 * sum(|terms|), where sum(|terms|) is the same
convolution (or gradient) of the absolute values. Measured worst case over the cases below: 1.4 (forward), 2.2
(input gradient), 1.5 (kernel gradient); 1.8 / 2.5 / 1.6 in a wider sweep (k 3, 5; stride 1, 2; sizes 7, 8, 16,
17; 1 to 96 channels); so ULPS = 4. (Scaling the kernel gradient by 1 + 1e-6 already fails it.) "lax" itself
equals flax's nn.Conv(feature_group_count=C) bitwise (same XLA op).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cqd_jax.models.depthwise import DepthwiseConv, depthwise_conv, resolve_impl

XLA_OPTIMIZED = True  # bounds the rounding of XLA's compiled convolutions

ULPS = 4.0
EPS32 = float(jnp.finfo(jnp.float32).eps)
# (kernel, strides, input height, input width, channels): odd and even sizes, 1 to 40 channels.
CASES = [
    (3, 1, 7, 8, 8), (3, 1, 8, 8, 1), (3, 2, 7, 7, 24), (3, 2, 8, 9, 5),
    (5, 1, 9, 9, 40), (5, 1, 6, 7, 3), (5, 2, 9, 10, 16), (5, 2, 8, 8, 7),
]


def _data(seed: int, shape, k: int):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
  return x, w


def _assert_close(got, want, abs_terms, what: str):
  """|got - want| <= ULPS * eps32 * sum(|terms|) elementwise (see the module docstring)."""
  got, want, abs_terms = (np.asarray(a, np.float64) for a in (got, want, abs_terms))
  assert got.shape == want.shape, what
  err = np.abs(got - want) / (EPS32 * abs_terms + 1e-30)
  assert err.max() <= ULPS, f"{what}: max error {err.max():.2f} eps * sum|terms|"


@pytest.mark.parametrize("k,strides,h,w,c", CASES)
def test_shift_matches_lax_and_nn_conv_values_and_grads(k, strides, h, w, c):
  x, kernel = _data(k * 100 + h, (2, h, w, c), k)
  out_shape = (2, -(-h // strides), -(-w // strides), c)  # SAME: ceil(size / strides)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)

  @jax.jit
  def outputs_and_grads(x, kernel, g):
    """{impl: (output, d<g, output>/dx, d<g, output>/dkernel)}; "abs" holds sum(|terms|) for each: the
    convolution is linear in each argument, so that is the same computation on absolute values."""
    results = {}
    for name, impl, args in (("lax", "lax", (x, kernel, g)), ("shift", "shift", (x, kernel, g)),
                             ("abs", "lax", (jnp.abs(x), jnp.abs(kernel), jnp.abs(g)))):
      out, vjp = jax.vjp(lambda x, k, impl=impl: depthwise_conv(x, k, strides, "SAME", impl), *args[:2])
      results[name] = (out, *vjp(args[2]))
    return results

  results = outputs_and_grads(x, kernel, g)
  assert results["shift"][0].shape == out_shape
  flax_conv = nn.Conv(c, (k, k), strides, padding="SAME", feature_group_count=c, use_bias=False)
  np.testing.assert_array_equal(results["lax"][0], flax_conv.apply({"params": {"kernel": kernel}}, x))
  for what, got, want, abs_terms in zip(("output", "d/dx", "d/dkernel"), results["shift"], results["lax"],
                                        results["abs"]):
    _assert_close(got, want, abs_terms, what)


def test_module_params_match_nn_conv_and_impls_agree():
  x, _ = _data(0, (2, 9, 9, 6), 3)
  module = DepthwiseConv(kernel_size=3, strides=2, use_bias=True, impl="shift")
  variables = jax.jit(module.init)(jax.random.key(0), x)
  flax_conv = nn.Conv(6, (3, 3), 2, padding="SAME", feature_group_count=6, use_bias=True)
  flax_variables = jax.jit(flax_conv.init)(jax.random.key(0), x)
  shapes = jax.tree_util.tree_map(jnp.shape, variables)
  assert shapes == jax.tree_util.tree_map(jnp.shape, flax_variables)
  assert shapes == {"params": {"kernel": (3, 3, 1, 6), "bias": (6,)}}
  # Same default initialiser as nn.Conv (lecun_normal over the k*k fan-in).
  np.testing.assert_array_equal(variables["params"]["kernel"], flax_variables["params"]["kernel"])
  variables = {"params": {"kernel": variables["params"]["kernel"], "bias": jnp.arange(6.0)}}
  want = flax_conv.apply(variables, x)
  np.testing.assert_array_equal(module.clone(impl="lax").apply(variables, x), want)
  np.testing.assert_allclose(jax.jit(module.apply)(variables, x), want, rtol=1e-5, atol=1e-5)


def test_torch_weight_layout_transposes_to_kernel():
  """A PyTorch depthwise weight [C, 1, kh, kw] (cross-correlation, like XLA) transposes (2, 3, 1, 0) to ours."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
  torch_w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
  out = depthwise_conv(jnp.asarray(x), jnp.asarray(torch_w.transpose(2, 3, 1, 0)), 1, "VALID", "shift")
  want = np.array([[[[np.sum(x[0, r:r + 3, q:q + 3, ch] * torch_w[ch, 0]) for ch in range(2)]
                     for q in range(3)] for r in range(3)]])
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_explicit_and_valid_padding():
  x, kernel = _data(4, (2, 8, 7, 3), 3)
  for padding, strides in (("VALID", 2), (((1, 1), (1, 1)), 1), (((0, 2), (2, 0)), 2)):

    @jax.jit
    def value_and_grads(x, kernel, padding=padding, strides=strides):
      f = lambda impl: lambda x, k: jnp.sum(depthwise_conv(x, k, strides, padding, impl) ** 2)
      return [jax.value_and_grad(f(impl), argnums=(0, 1))(x, kernel) for impl in ("lax", "shift")]

    (want, want_grads), (got, got_grads) = value_and_grads(x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_grads, want_grads):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16():
  """bfloat16: both impls accumulate in float32 and round once, so outputs and grads are within one bfloat16
  rounding (unit roundoff 2**-8, relative to sum(|terms|)) of the float32 computation on the same
  bfloat16-rounded values (measured: up to 0.99 of it), plus the float32 ordering term of the module docstring."""
  x, _ = _data(5, (2, 8, 8, 16), 3)
  module = DepthwiseConv(kernel_size=3, strides=2, dtype=jnp.bfloat16, impl="shift")
  variables = jax.jit(module.init)(jax.random.key(1), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  def loss(params):
    out = module.apply({"params": params}, x)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out), param_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert out.dtype == jnp.bfloat16
  assert param_grads["kernel"].dtype == jnp.float32 and np.all(np.isfinite(param_grads["kernel"]))

  @functools.partial(jax.jit, static_argnums=0)
  def output_and_grads(impl, x, kernel, g):
    out, vjp = jax.vjp(lambda x, k: depthwise_conv(x, k, 2, "SAME", impl), x, kernel)
    return (out, *vjp(g))

  xb, kb = x.astype(jnp.bfloat16), variables["params"]["kernel"].astype(jnp.bfloat16)
  g = jnp.asarray(np.random.default_rng(2).standard_normal(out.shape), jnp.bfloat16)
  f32 = lambda a: a.astype(jnp.float32)
  want = output_and_grads("lax", f32(xb), f32(kb), f32(g))
  abs_terms = output_and_grads("lax", jnp.abs(f32(xb)), jnp.abs(f32(kb)), jnp.abs(f32(g)))
  for impl in ("shift", "lax"):
    got = output_and_grads(impl, xb, kb, g)
    if impl == "shift":
      np.testing.assert_array_equal(got[0], out)
    for what, a, b, scale in zip(("output", "d/dx", "d/dkernel"), got, want, abs_terms):
      assert a.dtype == jnp.bfloat16, (impl, what)
      bound = (2.0**-8 + ULPS * EPS32) * np.asarray(scale)
      np.testing.assert_array_less(np.abs(np.asarray(a, np.float32) - np.asarray(b)), bound + 1e-30,
                                   err_msg=f"{impl} {what}")


def test_auto_picks_shift_on_cpu_and_bad_arguments():
  assert resolve_impl("lax") == "lax" and resolve_impl("shift") == "shift"
  assert resolve_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "lax")
  if jax.default_backend() == "cpu":
    x, kernel = _data(6, (1, 6, 6, 2), 3)
    assert "convolution" not in jax.jit(depthwise_conv).lower(x, kernel).as_text()
    module = DepthwiseConv(kernel_size=3)  # impl="auto" by default
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    assert "convolution" not in jax.jit(module.apply).lower(variables, x).as_text()
    assert "convolution" in jax.jit(module.clone(impl="lax").apply).lower(variables, x).as_text()
  with pytest.raises(ValueError, match="impl"):
    resolve_impl("fast")
  x, kernel = _data(7, (1, 6, 6, 2), 3)
  with pytest.raises(ValueError, match="kernel"):
    depthwise_conv(x, kernel[..., :1])
  with pytest.raises(ValueError, match="strides"):
    depthwise_conv(x, kernel, 0)
  with pytest.raises(ValueError, match="Padding"):
    depthwise_conv(x, kernel, 1, ((-1, 0), (0, 0)))
