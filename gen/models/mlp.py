"""Multi-layer perceptrons for low-dimensional data (the 2D mixture benchmarks)."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Generator(nn.Module):
  """z [B, latent] -> points [B, output_dim]."""
  hidden: Sequence[int] = (128, 128, 128)
  output_dim: int = 2
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    x = z
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.output_dim, dtype=self.dtype)(x).astype(jnp.float32)


class Discriminator(nn.Module):
  """points [B, D] -> logits [B]."""
  hidden: Sequence[int] = (128, 128, 128)
  negative_slope: float = 0.2
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width, dtype=self.dtype)(x), self.negative_slope)
    return nn.Dense(1, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)
