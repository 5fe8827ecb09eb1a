"""gen's layers compute flax.linen's functions, forward and both gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gen.models import layers
from gen.models.layers import Conv, ConvTranspose, Dropout, InstanceNorm


@pytest.fixture(params=["convolution", "matrix product"])
def lowering(request, monkeypatch):
  """Each convolution both ways gen computes it: XLA's convolution, and one matrix product of
  the input's shifted views (what `layers._as_matrix_product` picks for small images)."""
  everywhere = request.param == "matrix product"
  monkeypatch.setattr(layers, "MATMUL_MAX_OUT_PIXELS", 1 << 30 if everywhere else 0)
  monkeypatch.setattr(layers, "MATMUL_MAX_IN_CHANNELS", 1 << 30 if everywhere else 0)


def _assert_same_function(reference, ours, x, expected_shape):
  params = reference.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)

  expected, actual = jax.jit(reference.apply)(params, x), jax.jit(ours.apply)(params, x)
  assert actual.shape == expected.shape == expected_shape
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

  cotangent = jax.random.normal(jax.random.key(3), expected.shape)
  loss = lambda module: lambda p, x: jnp.vdot(module.apply(p, x), cotangent)
  expected_grads = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, x)
  actual_grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               actual_grads, expected_grads)


# A 5x5 kernel on a 2x3 image: its outer taps only ever see the padding.
@pytest.mark.parametrize("kernel, stride, size", [(5, 2, 7), (5, 1, 7), (3, 2, 7), (4, 2, 5),
                                                  (3, 1, 6), (1, 2, 3), (5, 1, 2)])
def test_conv_transpose_matches_flax(kernel, stride, size, lowering):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  _assert_same_function(
      nn.ConvTranspose(5, (kernel, kernel), strides=(stride, stride), padding="SAME"),
      ConvTranspose(5, (kernel, kernel), strides=(stride, stride)), x,
      (2, size * stride, (size + 1) * stride, 5))


# 64 x 64 channels take the sub-pixel input gradient; 3 x 5 take XLA's own.
@pytest.mark.parametrize("kernel, stride, size, channels", [
    (5, 2, 14, (64, 64)), (5, 2, 7, (64, 64)), (3, 2, 7, (64, 64)), (4, 2, 9, (64, 64)),
    (1, 2, 5, (64, 64)), (3, 3, 10, (64, 64)), (5, 2, 28, (3, 5)), (3, 1, 6, (3, 5)),
    (5, 1, 2, (3, 5)), (5, 2, 4, (3, 5))])
def test_conv_matches_flax(kernel, stride, size, channels, lowering):
  cin, cout = channels
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, cin))
  out = lambda n: -(-n // stride)
  _assert_same_function(nn.Conv(cout, (kernel, kernel), strides=(stride, stride), padding="SAME"),
                        Conv(cout, (kernel, kernel), strides=(stride, stride)), x,
                        (2, out(size), out(size + 1), cout))


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (3, 1, 1, 4)])  # A 1x1 image: zero variance.
def test_instance_norm_matches_flax(shape):
  x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.0
  _assert_same_function(nn.InstanceNorm(epsilon=1e-5), InstanceNorm(epsilon=1e-5), x, shape)


def test_instance_norm_gradients_are_the_functions():
  # Its backward pass is written out: check it against finite differences, scale and bias too.
  x = 2.0 * jax.random.normal(jax.random.key(0), (2, 4, 3, 5)) - 1.0
  scale, bias = jax.random.normal(jax.random.key(1), (5,)), jax.random.normal(jax.random.key(2), (5,))
  check_grads(lambda x, s, b: layers.instance_norm(x, s, b, 1e-5), (x, scale, bias),
                            order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_dropout_keeps_the_rate_scales_and_is_identity_when_deterministic():
  x = jnp.ones((64, 32, 32, 4))  # 4096 elements a row: chunks of 16 rows.
  layer = Dropout(0.3, chunk_elements=1 << 16)
  y = layer.apply({}, x, rngs={"dropout": jax.random.key(0)})
  kept = np.asarray(y != 0)
  assert abs(kept.mean() - 0.7) < 0.005
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
  # Chunks draw different masks, not one mask repeated.
  assert not np.array_equal(kept[:16], kept[16:32])
  np.testing.assert_array_equal(Dropout(0.3, deterministic=True).apply({}, x), x)


def test_conv_transpose_without_bias_has_only_a_kernel():
  params = ConvTranspose(4, (5, 5), strides=(2, 2), use_bias=False).init(
      jax.random.key(0), jnp.zeros((1, 7, 7, 2)))
  assert set(params["params"]) == {"kernel"}
