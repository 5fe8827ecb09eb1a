"""Losses: pure functions of logits and distribution parameters, averaged over the batch."""
import jax
import jax.numpy as jnp


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise -[y log σ(l) + (1 - y) log(1 - σ(l))], stable for any logit."""
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array,
                       real_label: float = 1.0) -> jax.Array:
  """The GAN discriminator's cross-entropy: real -> `real_label` (1, or e.g. 0.9 for
  one-sided label smoothing, Salimans et al. 2016), fake -> 0."""
  return (sigmoid_binary_cross_entropy(real_logits, real_label).mean()
          + sigmoid_binary_cross_entropy(fake_logits, 0.0).mean())


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The non-saturating generator loss, -log D(G(z))."""
  return sigmoid_binary_cross_entropy(fake_logits, 1.0).mean()


def minimax_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The original minimax generator loss, log(1 - D(G(z))) (Goodfellow et al. 2014)."""
  return -sigmoid_binary_cross_entropy(fake_logits, 0.0).mean()


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (Lim & Ye 2017; Miyato et al. 2018)."""
  return jax.nn.relu(1.0 - real_logits).mean() + jax.nn.relu(1.0 + fake_logits).mean()


def wasserstein_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The critic's loss, D(G(z)) - D(x) (Arjovsky et al. 2017)."""
  return fake_logits.mean() - real_logits.mean()


def negated_fake_logits(fake_logits: jax.Array) -> jax.Array:
  """-D(G(z)): the generator loss of both the hinge and the Wasserstein GAN."""
  return -fake_logits.mean()


def least_squares_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """½(D(x) - 1)² + ½D(G(z))² (LSGAN, Mao et al. 2017, with a = 0, b = c = 1)."""
  return 0.5 * ((real_logits - 1.0)**2).mean() + 0.5 * (fake_logits**2).mean()


def least_squares_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """½(D(G(z)) - 1)²."""
  return 0.5 * ((fake_logits - 1.0)**2).mean()


# name: (discriminator loss(real, fake), generator loss(fake)).
GAN_LOSSES = {
    "non_saturating": (discriminator_loss, generator_loss),
    "minimax": (discriminator_loss, minimax_generator_loss),
    "hinge": (hinge_discriminator_loss, negated_fake_logits),
    "wasserstein": (wasserstein_discriminator_loss, negated_fake_logits),
    "least_squares": (least_squares_discriminator_loss, least_squares_generator_loss),
}


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of class logits [B, K] against integer labels [B]."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1).mean()


def gradient_penalty(grads: jax.Array, target: float = 1.0) -> jax.Array:
  """mean over the batch of (‖∇ₓD‖₂ - target)², for input gradients [B, ...]: WGAN-GP's
  penalty with target 1 (Gulrajani et al. 2017)."""
  norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1)**2, axis=-1) + 1e-12)
  return ((norms - target)**2).mean()


def r1_penalty(grads: jax.Array) -> jax.Array:
  """mean over the batch of ‖∇ₓD(x)‖², for gradients at real examples (Mescheder et al.
  2018); the caller scales it by γ/2."""
  return jnp.sum(grads.reshape(grads.shape[0], -1)**2, axis=-1).mean()


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, I)) [B], summed over the last axis."""
  return gaussian_kl_per_dimension(mean, log_var).sum(-1)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log p(x | logits) [B] for targets x in [0, 1], summed over all but the batch axis."""
  return -sigmoid_binary_cross_entropy(logits, x).reshape(x.shape[0], -1).sum(-1)


def gaussian_log_likelihood(mean: jax.Array, x: jax.Array, log_scale: float | jax.Array = 0.0
                            ) -> jax.Array:
  """log N(x | mean, exp(log_scale)²) [B], summed over all but the batch axis."""
  z = (x - mean) * jnp.exp(-log_scale)
  log_density = -0.5 * z**2 - log_scale - 0.5 * jnp.log(2 * jnp.pi)
  return log_density.reshape(x.shape[0], -1).sum(-1)


def gaussian_log_density(z: jax.Array, mean: jax.Array | float = 0.0,
                         log_var: jax.Array | float = 0.0) -> jax.Array:
  """log N(z | mean, exp(log_var)) [B], summed over the last axis (diagonal Gaussian)."""
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var + (z - mean)**2 * jnp.exp(-log_var), axis=-1)


def importance_weighted_bound(log_weights: jax.Array) -> jax.Array:
  """log (1/K) Σ_k exp(log_weights[k]) [B] for log_weights [K, B] (Burda et al. 2016)."""
  return jax.nn.logsumexp(log_weights, axis=0) - jnp.log(log_weights.shape[0])


# VAE likelihoods: name -> decoder outputs per image channel (the mean or logits, and for two
# outputs a log-scale after them). "gaussian" has the fixed config.model.observation_std.
LIKELIHOODS = {"bernoulli": 1, "gaussian": 1, "gaussian_learned": 2, "logistic": 2}


def soft_clamp(x: jax.Array, low: float, high: float) -> jax.Array:
  """x bounded smoothly to (low - ε, high), ε = log(1 + e^(low - high)): within 0.014 of x
  where x is 5 or more from both bounds, with a gradient that never vanishes (unlike jnp.clip)."""
  x = low + jax.nn.softplus(x - low)
  return high - jax.nn.softplus(high - x)


def gaussian_kl_per_dimension(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, 1)) elementwise [B, latent]: gaussian_kl before the sum."""
  return 0.5 * (jnp.exp(log_var) + mean**2 - 1.0 - log_var)


def free_bits_kl(kl_per_dimension: jax.Array, free_bits: float) -> jax.Array:
  """Σ_j max(λ, mean_b KL[b, j]) for KL [B, latent]: each latent dimension's KL, averaged over
  the batch, then clamped below at λ = `free_bits` nats (Kingma et al. 2016), so that no
  gradient pushes a dimension's KL below λ."""
  return jnp.maximum(kl_per_dimension.mean(0), free_bits).sum()


def discretized_logistic_log_prob(mean: jax.Array, log_scale: jax.Array, x: jax.Array,
                                  num_bins: int = 256) -> jax.Array:
  """Elementwise log P(x) of the discretised logistic (Salimans et al. 2017, PixelCNN++) on
  `num_bins` equal bins of [0, 1], x rounded to the nearest bin centre k/(num_bins - 1).

  P(bin k) = σ((x + h - mean)/s) - σ((x - h - mean)/s) with h half a bin and s = exp(log_scale);
  the first and last bins reach to -∞ and +∞, so the bins' probabilities sum to 1.
  """
  bin_index = jnp.clip(jnp.round(x * (num_bins - 1)), 0, num_bins - 1)
  centre = bin_index / (num_bins - 1)
  half_bin = 0.5 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  plus = (centre + half_bin - mean) * inv_scale
  minus = (centre - half_bin - mean) * inv_scale
  # log(σ(a) - σ(b)) = a + log(1 - e^(b-a)) - softplus(a) - softplus(b) for a > b, exact in
  # float32 where the difference of the CDFs underflows or cancels.
  interior = (plus + jnp.log(-jnp.expm1(minus - plus)) - jax.nn.softplus(plus)
              - jax.nn.softplus(minus))
  first = -jax.nn.softplus(-plus)  # log σ(plus): the bin reaching to -∞.
  last = -jax.nn.softplus(minus)  # log(1 - σ(minus)): the bin reaching to +∞.
  return jnp.where(bin_index == 0, first, jnp.where(bin_index == num_bins - 1, last, interior))


def discretized_logistic_log_likelihood(mean: jax.Array, log_scale: jax.Array, x: jax.Array,
                                        num_bins: int = 256) -> jax.Array:
  """log P(x | mean, log_scale) [B] in nats for 8-bit images x in [0, 1], summed over all but
  the batch axis (see discretized_logistic_log_prob)."""
  log_prob = discretized_logistic_log_prob(mean, log_scale, x, num_bins)
  return log_prob.reshape(x.shape[0], -1).sum(-1)
