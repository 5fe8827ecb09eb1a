"""Losses: pure functions of logits and distribution parameters, averaged over the batch."""
import jax
import jax.numpy as jnp


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise -[y log σ(l) + (1 - y) log(1 - σ(l))], stable for any logit."""
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The GAN discriminator's cross-entropy: real -> 1, fake -> 0."""
  return (sigmoid_binary_cross_entropy(real_logits, 1.0).mean()
          + sigmoid_binary_cross_entropy(fake_logits, 0.0).mean())


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The non-saturating generator loss, -log D(G(z))."""
  return sigmoid_binary_cross_entropy(fake_logits, 1.0).mean()


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, I)) [B], summed over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)


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
