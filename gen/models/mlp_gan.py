"""Multi-layer perceptron GANs: the 2D mixture benchmarks, and the vanilla GAN on images
(Goodfellow et al. 2014; the seed design's Dense 128 + LeakyReLU(0.01) -> 784 tanh)."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen import checks, models
from gen.models.layers import DiscriminatorHead, condition_latent, maybe_spectral_norm


class Generator(nn.Module):
  """z [B, latent] (and labels [B]) -> examples [B, *shape]; images (3 axes) go through tanh."""
  hidden: Sequence[int] = (128, 128, 128)
  shape: Sequence[int] = (2,)
  negative_slope: float = 0.0  # 0: ReLU.
  num_classes: int = 0
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, train: bool = True
               ) -> jax.Array:
    x = condition_latent(z, labels, self.num_classes)
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width, dtype=self.dtype)(x), self.negative_slope)
    x = nn.Dense(int(np.prod(self.shape)), dtype=self.dtype)(x).astype(jnp.float32)
    x = x.reshape(z.shape[0], *self.shape)
    return jnp.tanh(x) if len(self.shape) == 3 else x


class Discriminator(nn.Module):
  """examples [B, ...] (and labels [B]) -> (logits [B], class logits [B, K] or None)."""
  hidden: Sequence[int] = (128, 128, 128)
  negative_slope: float = 0.2
  num_classes: int = 0
  conditioning: str = "none"
  spectral_norm: bool = False
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      dense = maybe_spectral_norm(nn.Dense(width, dtype=self.dtype), self.spectral_norm, train)
      x = nn.leaky_relu(dense(x), self.negative_slope)
    return DiscriminatorHead(self.num_classes, self.conditioning, self.spectral_norm,
                             self.dtype)(x, labels, train)


FAMILY = "gan"


def build(model_config, shape) -> dict:
  """{"generator", "discriminator"}, both with the hidden widths `model_config.hidden`."""
  hidden = checks.widths(model_config.hidden, "model.hidden")
  checks.at_least(model_config.latent_dim, "model.latent_dim", 1)
  conditioning = models.gan_conditioning(model_config)
  dtype = jnp.dtype(model_config.dtype)
  return {
      "generator": Generator(hidden, shape=tuple(shape),
                             negative_slope=model_config.get("generator_negative_slope", 0.0),
                             num_classes=conditioning["num_classes"], dtype=dtype),
      "discriminator": Discriminator(hidden, negative_slope=model_config.get("negative_slope", 0.2),
                                     dtype=dtype, **conditioning),
  }
