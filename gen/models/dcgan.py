"""DCGAN (the TensorFlow-tutorial architecture for 28x28), with widths and resolution configurable.

A `base` x `base` seed is upsampled by one stride-1 and two stride-2 transposed
convolutions, so the output is 4·base pixels square: base 7 gives 28x28, base 2 gives 8x8.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen.models.layers import Conv, ConvTranspose, Dropout


class Generator(nn.Module):
  """z [B, latent] -> images [B, 4·base, 4·base, channels] in [-1, 1]."""
  features: Sequence[int] = (256, 128, 64)
  base: int = 7
  channels: int = 1
  kernel_size: int = 5
  negative_slope: float = 0.3
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                              dtype=self.dtype)
    act = lambda x: nn.leaky_relu(x, self.negative_slope)
    k = (self.kernel_size, self.kernel_size)
    x = nn.Dense(self.base * self.base * self.features[0], use_bias=False, dtype=self.dtype)(z)
    x = act(bn()(x)).reshape(z.shape[0], self.base, self.base, self.features[0])
    x = act(bn()(ConvTranspose(self.features[1], k, strides=(1, 1), use_bias=False,
                               dtype=self.dtype)(x)))
    x = act(bn()(ConvTranspose(self.features[2], k, strides=(2, 2), use_bias=False,
                               dtype=self.dtype)(x)))
    x = ConvTranspose(self.channels, k, strides=(2, 2), use_bias=False, dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images [B, H, W, C] -> logits [B]."""
  features: Sequence[int] = (64, 128)
  kernel_size: int = 5
  negative_slope: float = 0.3
  dropout: float = 0.3
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    for width in self.features:
      x = Conv(width, k, strides=(2, 2), dtype=self.dtype)(x)
      x = nn.leaky_relu(x, self.negative_slope)
      x = Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(1, dtype=self.dtype)(x.reshape(x.shape[0], -1))[:, 0]
    return logits.astype(jnp.float32)
