"""Multi-layer perceptrons for low-dimensional data (the 2D mixture benchmarks)."""
from collections.abc import Sequence

import flax.linen as nn
import jax


class Generator(nn.Module):
  """z [B, latent] -> points [B, output_dim]."""
  hidden: Sequence[int] = (128, 128, 128)
  output_dim: int = 2

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    x = z
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.output_dim)(x)


class Discriminator(nn.Module):
  """points [B, D] -> logits [B]."""
  hidden: Sequence[int] = (128, 128, 128)
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for width in self.hidden:
      x = nn.leaky_relu(nn.Dense(width)(x), self.negative_slope)
    return nn.Dense(1)(x)[:, 0]
