"""DCGAN (Radford et al. 2016; the TensorFlow-tutorial layers for 28x28), any depth and size.

A `base` x `base` seed is upsampled by one stride-1 and then stride-2 transposed
convolutions, one per width after the first and one to the output channels, so the
output is base·2^len(features[1:]) pixels square: widths (256, 128, 64) turn base 7 into
28x28, base 8 into 32x32 and base 2 into 8x8; (512, 256, 128, 64) turn base 8 into 64x64.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks, models
from gen.models.layers import (Conv, ConvTranspose, DiscriminatorHead, Dropout, condition_latent,
                               maybe_spectral_norm)


class Generator(nn.Module):
  """z [B, latent] (and labels [B]) -> images [B, size, size, channels] in [-1, 1]."""
  features: Sequence[int] = (256, 128, 64)
  base: int = 7
  channels: int = 1
  kernel_size: int = 5
  negative_slope: float = 0.3
  num_classes: int = 0  # > 0: the labels' one-hot codes are appended to z.
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, train: bool = True
               ) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                              dtype=self.dtype)
    act = lambda x: nn.leaky_relu(x, self.negative_slope)
    k = (self.kernel_size, self.kernel_size)
    x = condition_latent(z, labels, self.num_classes)
    x = nn.Dense(self.base * self.base * self.features[0], use_bias=False, dtype=self.dtype)(x)
    x = act(bn()(x)).reshape(z.shape[0], self.base, self.base, self.features[0])
    for i, width in enumerate(self.features[1:]):
      stride = 1 if i == 0 else 2
      x = act(bn()(ConvTranspose(width, k, strides=(stride, stride), use_bias=False,
                                 dtype=self.dtype)(x)))
    x = ConvTranspose(self.channels, k, strides=(2, 2), use_bias=False, dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images [B, H, W, C] (and labels [B]) -> (logits [B], class logits [B, K] or None)."""
  features: Sequence[int] = (64, 128)
  kernel_size: int = 5
  negative_slope: float = 0.3
  dropout: float = 0.3
  num_classes: int = 0
  conditioning: str = "none"  # See layers.DiscriminatorHead.
  spectral_norm: bool = False
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    features = strided_trunk(self, x, train)
    return DiscriminatorHead(self.num_classes, self.conditioning, self.spectral_norm,
                             self.dtype)(features, labels, train)


def strided_trunk(module, x: jax.Array, train: bool) -> jax.Array:
  """The discriminator's strided convolutions (leaky ReLU, dropout) as features [B, D],
  built in `module`'s compact call from its fields (so the layers are named in it)."""
  k = (module.kernel_size, module.kernel_size)
  for width in module.features:
    conv = Conv(width, k, strides=(2, 2), dtype=module.dtype)
    x = maybe_spectral_norm(conv, module.spectral_norm, train)(x)
    x = nn.leaky_relu(x, module.negative_slope)
    x = Dropout(module.dropout, deterministic=not train)(x)
  return x.reshape(x.shape[0], -1)


FAMILY = "gan"


def discriminator(model_config, dtype, **conditioning) -> Discriminator:
  """The DCGAN discriminator of `model_config` (discriminator_features, dropout)."""
  features = checks.widths(model_config.discriminator_features, "model.discriminator_features")
  dropout = checks.in_range(model_config.get("dropout", 0.3), "model.dropout", 0.0, 1.0,
                            high_open=True)
  return Discriminator(features, dropout=dropout, dtype=dtype, **conditioning)


def build(model_config, shape) -> dict:
  """{"generator", "discriminator"}: generator_features set the depth (and with the image
  side, the seed's size), discriminator_features the discriminator's widths."""
  features = checks.widths(model_config.generator_features, "model.generator_features", 2)
  checks.at_least(model_config.latent_dim, "model.latent_dim", 1)
  scale = 2 ** len(features[1:])
  if len(shape) != 3 or shape[0] != shape[1] or shape[0] % scale:
    raise UsageError(f"dcgan with {len(features)} generator widths needs square images with "
                     f"a side divisible by {scale}, got {shape}.")
  conditioning = models.gan_conditioning(model_config)
  dtype = jnp.dtype(model_config.dtype)
  return {
      "generator": Generator(features, base=shape[0] // scale, channels=shape[-1],
                             num_classes=conditioning["num_classes"], dtype=dtype),
      "discriminator": discriminator(model_config, dtype, **conditioning),
  }
