"""Losses against NumPy/SciPy closed forms, and their gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import stats

from gen import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_sigmoid_binary_cross_entropy_matches_closed_form():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(64,)).astype(np.float32)
  labels = rng.uniform(size=(64,)).astype(np.float32)
  p = _sigmoid(logits.astype(np.float64))
  expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(logits, labels), expected,
                             rtol=1e-5, atol=1e-6)


def test_sigmoid_binary_cross_entropy_is_finite_for_extreme_logits():
  logits = jnp.array([-1e4, -80.0, 0.0, 80.0, 1e4])
  value = losses.sigmoid_binary_cross_entropy(logits, jnp.array([1.0, 1.0, 0.5, 0.0, 0.0]))
  assert np.all(np.isfinite(value))
  np.testing.assert_allclose(value[0], 1e4, rtol=1e-6)  # -log σ(-1e4) = 1e4.
  np.testing.assert_allclose(value[2], np.log(2.0), rtol=1e-6)


def test_gan_losses_match_closed_form():
  real = np.array([2.0, -1.0, 0.5], np.float32)
  fake = np.array([-3.0, 0.2], np.float32)
  expected_d = np.mean(-np.log(_sigmoid(real))) + np.mean(-np.log(1 - _sigmoid(fake)))
  expected_g = np.mean(-np.log(_sigmoid(fake)))
  np.testing.assert_allclose(losses.discriminator_loss(real, fake), expected_d, rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(fake), expected_g, rtol=1e-6)


def test_bce_gradients():
  logits = jnp.array([-2.0, 0.3, 1.5])
  labels = jnp.array([0.0, 1.0, 0.7])
  check_grads(lambda l: losses.sigmoid_binary_cross_entropy(l, labels).sum(), (logits,), order=2,
              modes=("rev",), atol=1e-2, rtol=1e-2)


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
  rng = np.random.default_rng(1)
  mean = rng.normal(size=(4, 3))
  log_var = rng.normal(scale=0.5, size=(4, 3))
  var = np.exp(log_var)
  expected = np.sum(0.5 * (var + mean**2 - 1 - log_var), axis=-1)
  np.testing.assert_allclose(losses.gaussian_kl(jnp.asarray(mean, jnp.float32),
                                                jnp.asarray(log_var, jnp.float32)),
                             expected, rtol=1e-5)
  # Monte Carlo: E_q[log q(z) - log p(z)].
  z = mean + np.sqrt(var) * rng.standard_normal((200_000, 4, 3))
  log_q = stats.norm.logpdf(z, mean, np.sqrt(var)).sum(-1)
  log_p = stats.norm.logpdf(z).sum(-1)
  np.testing.assert_allclose((log_q - log_p).mean(0), expected, rtol=0.03, atol=0.01)


def test_gaussian_kl_is_zero_for_the_prior():
  np.testing.assert_allclose(losses.gaussian_kl(jnp.zeros((2, 5)), jnp.zeros((2, 5))), 0.0)


@pytest.mark.parametrize("log_scale", [0.0, np.log(0.1)])
def test_gaussian_log_likelihood_matches_scipy(log_scale):
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  mean = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  expected = stats.norm.logpdf(x, mean, np.exp(log_scale)).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(losses.gaussian_log_likelihood(mean, x, log_scale), expected,
                             rtol=1e-5)


def test_bernoulli_log_likelihood_matches_scipy_for_binary_targets():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 5, 5, 1)).astype(np.float32)
  x = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
  expected = stats.bernoulli.logpmf(x, _sigmoid(logits.astype(np.float64))).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(losses.bernoulli_log_likelihood(logits, x), expected, rtol=1e-5)


def test_gaussian_log_likelihood_with_per_pixel_scales_matches_scipy():
  # The learned-variance Gaussian: one log-scale per pixel.
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(3, 4, 4, 2)).astype(np.float32)
  mean = rng.uniform(size=x.shape).astype(np.float32)
  log_scale = rng.uniform(-7.0, 2.0, size=x.shape).astype(np.float32)
  expected = stats.norm.logpdf(x.astype(np.float64), mean, np.exp(log_scale.astype(np.float64)))
  np.testing.assert_allclose(losses.gaussian_log_likelihood(mean, x, log_scale),
                             expected.reshape(3, -1).sum(-1), rtol=1e-5)


def _logistic_bin_probability(k, mean, scale, num_bins=256):
  """P(bin k) from SciPy's logistic CDF in float64, the edge bins reaching to ±∞; above the
  mean as the difference of survival functions, which does not cancel to 0 there."""
  upper = np.where(k == num_bins - 1, np.inf, (k + 0.5) / (num_bins - 1))
  lower = np.where(k == 0, -np.inf, (k - 0.5) / (num_bins - 1))
  by_cdf = stats.logistic.cdf(upper, mean, scale) - stats.logistic.cdf(lower, mean, scale)
  by_sf = stats.logistic.sf(lower, mean, scale) - stats.logistic.sf(upper, mean, scale)
  return np.where(k / (num_bins - 1) > mean, by_sf, by_cdf)


def test_discretized_logistic_matches_scipy_cdf_differences_including_edge_bins():
  rng = np.random.default_rng(5)
  bins = np.concatenate([[0, 255, 0, 255, 1, 254], rng.integers(0, 256, size=58)])
  mean = np.concatenate([[0.0, 1.0, 0.6, 0.3, 0.0, 1.0], rng.uniform(-0.2, 1.2, size=58)])
  log_scale = np.concatenate([[-3.0, -3.0, -2.0, -1.0, -5.0, -5.0], rng.uniform(-6.0, 1.0, 58)])
  x = bins / 255.0
  expected = np.log(_logistic_bin_probability(bins, mean, np.exp(log_scale)))
  log_prob = losses.discretized_logistic_log_prob(jnp.asarray(mean, jnp.float32),
                                                  jnp.asarray(log_scale, jnp.float32),
                                                  jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
  # Summed per example over all but the batch axis, in nats.
  log_likelihood = losses.discretized_logistic_log_likelihood(
      *(jnp.asarray(a.reshape(4, 4, 4, 1), jnp.float32) for a in (mean, log_scale, x)))
  np.testing.assert_allclose(log_likelihood, expected.reshape(4, -1).sum(-1), rtol=1e-4)


def test_discretized_logistic_is_exact_where_the_cdf_difference_underflows():
  # A bin 40 scales from the mean: the CDF difference of float32 is 0; the log is not -inf.
  mean, log_scale, x = 0.0, np.log(0.005), 200 / 255.0
  expected = np.log(_logistic_bin_probability(np.array(200), mean, 0.005))
  value = losses.discretized_logistic_log_prob(jnp.float32(mean), jnp.float32(log_scale),
                                               jnp.float32(x))
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  grads = jax.grad(lambda m, s: losses.discretized_logistic_log_prob(m, s, jnp.float32(x)),
                   argnums=(0, 1))(jnp.float32(mean), jnp.float32(log_scale))
  assert all(np.isfinite(g) for g in grads)


@pytest.mark.parametrize("mean, log_scale", [(0.5, -2.0), (0.0, -7.0), (1.0, 2.0), (-0.3, -4.0),
                                             (0.37, -7.0), (1.4, 0.0)])
def test_discretized_logistic_probabilities_sum_to_one(mean, log_scale):
  x = jnp.arange(256, dtype=jnp.float32) / 255.0
  log_probs = losses.discretized_logistic_log_prob(jnp.full(256, mean), jnp.full(256, log_scale), x)
  assert np.all(np.isfinite(log_probs))
  np.testing.assert_allclose(float(jnp.exp(log_probs).sum()), 1.0, rtol=1e-5)


def test_soft_clamp_is_bounded_near_identity_and_keeps_a_gradient():
  x = jnp.array([-1e4, -30.0, -2.5, 0.0, 1.0, 30.0, 1e4])
  y = np.asarray(losses.soft_clamp(x, -10.0, 10.0))
  assert np.all(y >= -10.0 - 1e-6) and np.all(y <= 10.0)
  np.testing.assert_allclose(y[2:5], x[2:5], atol=0.014)
  np.testing.assert_allclose(y[[0, 6]], [-10.0, 10.0], atol=1e-5)
  assert float(jax.grad(lambda v: losses.soft_clamp(v, -7.0, 2.0))(3.0)) > 0


def test_free_bits_clamps_each_dimensions_batch_mean_kl():
  kl = np.array([[0.1, 2.0, 0.0], [0.3, 0.0, 0.05]], np.float32)  # [B, latent]
  # Dimension means 0.2, 1.0, 0.025: the first and last are raised to λ = 0.5, the second not.
  np.testing.assert_allclose(losses.free_bits_kl(kl, 0.5), 0.5 + 1.0 + 0.5, rtol=1e-6)
  np.testing.assert_allclose(losses.free_bits_kl(kl, 0.0), kl.mean(0).sum(), rtol=1e-6)
  # Below λ a dimension's KL gets no gradient; above, the batch mean's.
  grads = jax.grad(lambda k: losses.free_bits_kl(k, 0.5))(jnp.asarray(kl))
  np.testing.assert_allclose(grads, [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]])


def test_gaussian_kl_per_dimension_sums_to_gaussian_kl():
  rng = np.random.default_rng(6)
  mean, log_var = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(2))
  per_dimension = losses.gaussian_kl_per_dimension(mean, log_var)
  assert per_dimension.shape == (5, 3) and np.all(per_dimension >= 0)
  np.testing.assert_allclose(per_dimension.sum(-1), losses.gaussian_kl(mean, log_var), rtol=1e-6)
