"""A convolutional VAE: encoder to a diagonal Gaussian posterior, decoder to likelihood parameters.

With num_classes > 0 it is a conditional VAE: both halves see the labels [B] as one-hot codes,
appended to the encoder's flattened features and to the decoder's z.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import checks, losses, models
from gen.losses import soft_clamp
from gen.models.layers import Conv, ConvTranspose, condition_latent


class Encoder(nn.Module):
  """images [B, H, W, C] (and labels [B]) -> (mean [B, latent], log_var [B, latent])."""
  latent_dim: int = 16
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.
  num_classes: int = 0
  # exp(log_var) neither overflows nor vanishes, even where a high learning rate throws the
  # last layer far out; the soft bound keeps a gradient there, unlike a clip.
  log_var_range: tuple[float, float] = (-10.0, 10.0)

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    for width in self.features:
      x = nn.relu(Conv(width, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    x = condition_latent(x.reshape(x.shape[0], -1), labels, self.num_classes)
    x = nn.relu(nn.Dense(256, dtype=self.dtype)(x))
    x = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(x).astype(jnp.float32)
    mean, log_var = jnp.split(x, 2, axis=-1)
    return mean, soft_clamp(log_var, *self.log_var_range)


class Decoder(nn.Module):
  """z [B, latent] (and labels [B]) -> likelihood parameters [B, H, W, C·outputs_per_channel]:
  Bernoulli logits or means, then log-scales for two outputs per channel."""
  shape: Sequence[int] = (28, 28, 1)
  features: Sequence[int] = (64, 32)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.
  num_classes: int = 0
  outputs_per_channel: int = 1

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    height, width, channels = self.shape
    scale = 2 ** len(self.features)
    h, w = height // scale, width // scale
    dense = lambda n: nn.Dense(n, dtype=self.dtype)
    x = nn.relu(dense(256)(condition_latent(z, labels, self.num_classes)))
    x = nn.relu(dense(h * w * self.features[0])(x)).reshape(z.shape[0], h, w, self.features[0])
    for width_ in self.features:
      x = nn.relu(ConvTranspose(width_, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    x = Conv(channels * self.outputs_per_channel, (3, 3), dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class VAE(nn.Module):
  """x [B, H, W, C] (and labels [B]) -> (decoder output, mean, log_var), sampling z by
  reparameterisation."""
  shape: Sequence[int] = (28, 28, 1)
  latent_dim: int = 16
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.
  num_classes: int = 0  # > 0: conditional on labels [B] in [0, num_classes).
  outputs_per_channel: int = 1  # Likelihood parameters per pixel and channel.

  def setup(self):
    self.encoder = Encoder(self.latent_dim, self.features, self.dtype, self.num_classes)
    self.decoder = Decoder(self.shape, tuple(reversed(self.features)), self.dtype,
                           self.num_classes, self.outputs_per_channel)

  def __call__(self, x: jax.Array, rng: jax.Array, labels: jax.Array | None = None):
    mean, log_var = self.encoder(x, labels)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decoder(z, labels), mean, log_var

  def encode(self, x: jax.Array, labels: jax.Array | None = None):
    return self.encoder(x, labels)

  def decode(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    return self.decoder(z, labels)


FAMILY = "vae"


def build(model_config, shape) -> dict:
  """{"vae"}: the encoder's widths `features` (the decoder mirrors them), `latent_dim`, and
  as many outputs per pixel as `likelihood` has parameters."""
  features = checks.widths(model_config.features, "model.features")
  checks.at_least(model_config.latent_dim, "model.latent_dim", 1)
  likelihood = checks.one_of(model_config.get("likelihood", "bernoulli"), "model.likelihood",
                             sorted(losses.LIKELIHOODS))
  if likelihood == "gaussian":
    checks.positive(model_config.observation_std, "model.observation_std")
  classes = checks.at_least(models.num_classes(model_config), "model.num_classes", 0)
  return {"vae": VAE(tuple(shape), model_config.latent_dim, features,
                     jnp.dtype(model_config.dtype), num_classes=classes,
                     outputs_per_channel=losses.LIKELIHOODS[likelihood])}
