"""A convolutional VAE: encoder to a diagonal Gaussian posterior, decoder to likelihood parameters."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen.models.layers import Conv, ConvTranspose


class Encoder(nn.Module):
  """images [B, H, W, C] -> (mean [B, latent], log_var [B, latent])."""
  latent_dim: int = 16
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    for width in self.features:
      x = nn.relu(Conv(width, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(256, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    x = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(x).astype(jnp.float32)
    mean, log_var = jnp.split(x, 2, axis=-1)
    return mean, log_var


class Decoder(nn.Module):
  """z [B, latent] -> likelihood parameters [B, H, W, C] (Bernoulli logits or Gaussian means)."""
  shape: Sequence[int] = (28, 28, 1)
  features: Sequence[int] = (64, 32)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    height, width, channels = self.shape
    scale = 2 ** len(self.features)
    h, w = height // scale, width // scale
    dense = lambda n: nn.Dense(n, dtype=self.dtype)
    x = nn.relu(dense(256)(z))
    x = nn.relu(dense(h * w * self.features[0])(x)).reshape(z.shape[0], h, w, self.features[0])
    for width_ in self.features:
      x = nn.relu(ConvTranspose(width_, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    return Conv(channels, (3, 3), dtype=self.dtype)(x).astype(jnp.float32)


class VAE(nn.Module):
  """x [B, H, W, C] -> (decoder output [B, H, W, C], mean, log_var), sampling z by reparameterisation."""
  shape: Sequence[int] = (28, 28, 1)
  latent_dim: int = 16
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  def setup(self):
    self.encoder = Encoder(self.latent_dim, self.features, self.dtype)
    self.decoder = Decoder(self.shape, tuple(reversed(self.features)), self.dtype)

  def __call__(self, x: jax.Array, rng: jax.Array):
    mean, log_var = self.encoder(x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decoder(z), mean, log_var

  def encode(self, x: jax.Array):
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)
