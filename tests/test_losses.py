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
