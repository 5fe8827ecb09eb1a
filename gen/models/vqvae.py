"""VQ-VAE (van den Oord et al. 2017): a convolutional encoder to a grid of vectors, each snapped
to its nearest code of a codebook learnt by exponential moving averages, and a decoder.

The layers are those of Sonnet's CIFAR-10 example: two 4x4 stride-2 convolutions and a 3x3
one, residual blocks (ReLU, 3x3 to the residual width, ReLU, 1x1 back), a 1x1 convolution to
the code dimension; the decoder mirrors it with 4x4 stride-2 transposed convolutions.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks
from gen.models.layers import Conv, ConvTranspose

# Nearest codes and the codebook's statistics in full float32 even where matmuls default to
# lower precision (TF32 on GPUs): a near tie must not flip with the backend.
_EXACT = jax.lax.Precision.HIGHEST


class ResidualStack(nn.Module):
  """x [..., width] -> x + Σ blocks, then ReLU; each block ReLU, 3x3 conv, ReLU, 1x1 conv."""
  width: int
  num_blocks: int = 2
  residual_width: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.num_blocks):
      h = Conv(self.residual_width, (3, 3), dtype=self.dtype)(nn.relu(x))
      x = x + Conv(self.width, (1, 1), dtype=self.dtype)(nn.relu(h))
    return nn.relu(x)


class Encoder(nn.Module):
  """images [B, H, W, C] -> z_e [B, H/4, W/4, embedding_dim] (float32)."""
  hidden: int = 128
  num_residual_blocks: int = 2
  residual_width: int = 32
  embedding_dim: int = 64
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(Conv(self.hidden // 2, (4, 4), strides=(2, 2), dtype=self.dtype)(x))
    x = nn.relu(Conv(self.hidden, (4, 4), strides=(2, 2), dtype=self.dtype)(x))
    x = Conv(self.hidden, (3, 3), dtype=self.dtype)(x)
    x = ResidualStack(self.hidden, self.num_residual_blocks, self.residual_width, self.dtype)(x)
    return Conv(self.embedding_dim, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)


class Decoder(nn.Module):
  """quantized [B, h, w, embedding_dim] -> images [B, 4h, 4w, channels] (unbounded, model space)."""
  channels: int = 3
  hidden: int = 128
  num_residual_blocks: int = 2
  residual_width: int = 32
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = Conv(self.hidden, (3, 3), dtype=self.dtype)(z)
    x = ResidualStack(self.hidden, self.num_residual_blocks, self.residual_width, self.dtype)(x)
    x = nn.relu(ConvTranspose(self.hidden // 2, (4, 4), strides=(2, 2), dtype=self.dtype)(x))
    return ConvTranspose(self.channels, (4, 4), strides=(2, 2),
                         dtype=self.dtype)(x).astype(jnp.float32)


class VectorQuantizer(nn.Module):
  """z [..., D] -> (quantized [..., D], code indices [...], commitment ‖z - sg(e)‖² averaged).

  The codebook is not a parameter: it is learnt by exponential moving averages (the paper's
  appendix; Sonnet's and Haiku's VectorQuantizerEMA), held in the "batch_stats" collection:
    cluster_size [K], embedding_sum [K, D]: EMAs (decay γ, from zero) of each code's count of
      assigned vectors and of their sum;
    count []: the EMAs' updates so far, to debias them as Sonnet does (divide by 1 - γ^count);
    codebook [K, D]: debiased sums over Laplace-smoothed debiased counts,
      (N_i + ε) / (n + Kε) · n with n = Σ N_i.
  With `train` (and `mutable=["batch_stats"]`) one call updates them from all of z: inside a
  jitted step over a sharded batch the sums are the global batch's. Vectors are quantized with
  the codebook before the update.

  restart_threshold > 0 turns on dead-code restarts: after the update, codes whose debiased
  cluster size is below it become random vectors of z (rng "restart"), with one
  pseudo-observation of that vector as their statistics.
  """
  num_codes: int = 512
  embedding_dim: int = 64
  decay: float = 0.99
  epsilon: float = 1e-5
  restart_threshold: float = 0.0

  def setup(self):
    k, d = self.num_codes, self.embedding_dim
    # Sonnet's VarianceScaling(uniform) of its [D, K] matrix: fan-in D.
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)
    self.codebook = self.variable("batch_stats", "codebook",
                                  lambda: init(self.make_rng("params"), (k, d), jnp.float32))
    self.cluster_size = self.variable("batch_stats", "cluster_size", jnp.zeros, (k,), jnp.float32)
    self.embedding_sum = self.variable("batch_stats", "embedding_sum", jnp.zeros, (k, d),
                                       jnp.float32)
    self.count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)

  def lookup(self, indices: jax.Array) -> jax.Array:
    """The code vectors [..., D] of indices [...]."""
    return self.codebook.value[indices]

  def __call__(self, z: jax.Array, train: bool = False):
    z = z.astype(jnp.float32)
    flat = z.reshape(-1, self.embedding_dim)
    codebook = self.codebook.value
    distances = (jnp.sum(flat**2, axis=1, keepdims=True)
                 - 2.0 * jnp.matmul(flat, codebook.T, precision=_EXACT)
                 + jnp.sum(codebook**2, axis=1))
    flat_indices = jnp.argmin(distances, axis=1)
    indices = flat_indices.reshape(z.shape[:-1])
    codes = codebook[indices]
    commitment = jnp.mean((z - jax.lax.stop_gradient(codes))**2)
    if train and not self.is_initializing():
      self._update(jax.lax.stop_gradient(flat), flat_indices)
    # Straight-through: the decoder's gradient reaches the encoder unchanged.
    quantized = z + jax.lax.stop_gradient(codes - z)
    return quantized, indices, commitment

  def _update(self, flat: jax.Array, indices: jax.Array):
    """One EMA step of the codebook's statistics from vectors flat [N, D] and their codes [N]."""
    gamma, k = self.decay, self.num_codes
    one_hot = jax.nn.one_hot(indices, k, dtype=jnp.float32)
    cluster_size = gamma * self.cluster_size.value + (1.0 - gamma) * one_hot.sum(axis=0)
    embedding_sum = (gamma * self.embedding_sum.value
                     + (1.0 - gamma) * jnp.matmul(one_hot.T, flat, precision=_EXACT))
    count = self.count.value + 1
    debias = 1.0 - gamma**count.astype(jnp.float32)
    size = cluster_size / debias
    n = jnp.sum(size)
    smoothed = (size + self.epsilon) / (n + k * self.epsilon) * n
    codebook = embedding_sum / debias / smoothed[:, None]
    if self.restart_threshold > 0:
      picks = jax.random.choice(self.make_rng("restart"), flat.shape[0], (k,),
                                replace=flat.shape[0] < k)
      fresh = flat[picks]
      dead = size < self.restart_threshold
      codebook = jnp.where(dead[:, None], fresh, codebook)
      cluster_size = jnp.where(dead, debias, cluster_size)
      embedding_sum = jnp.where(dead[:, None], debias * fresh, embedding_sum)
    self.codebook.value = codebook
    self.cluster_size.value = cluster_size
    self.embedding_sum.value = embedding_sum
    self.count.value = count


class VQVAE(nn.Module):
  """x [B, H, W, C] -> (reconstruction [B, H, W, C], code indices [B, H/4, W/4], commitment)."""
  shape: Sequence[int] = (32, 32, 3)
  hidden: int = 128
  num_residual_blocks: int = 2
  residual_width: int = 32
  embedding_dim: int = 64
  num_codes: int = 512
  decay: float = 0.99
  epsilon: float = 1e-5
  restart_threshold: float = 0.0
  dtype: Any = jnp.float32  # Compute dtype; params, codebook and quantization stay float32.

  def setup(self):
    self.encoder = Encoder(self.hidden, self.num_residual_blocks, self.residual_width,
                           self.embedding_dim, self.dtype)
    self.quantizer = VectorQuantizer(self.num_codes, self.embedding_dim, self.decay,
                                     self.epsilon, self.restart_threshold)
    self.decoder = Decoder(self.shape[-1], self.hidden, self.num_residual_blocks,
                           self.residual_width, self.dtype)

  @property
  def latent_shape(self) -> tuple[int, int]:
    """(h, w) of the code grid."""
    return self.shape[0] // 4, self.shape[1] // 4

  def __call__(self, x: jax.Array, train: bool = False):
    quantized, indices, commitment = self.quantizer(self.encoder(x), train)
    return self.decoder(quantized), indices, commitment

  def encode(self, x: jax.Array) -> jax.Array:
    """z_e, before quantization."""
    return self.encoder(x)

  def quantize(self, z: jax.Array, train: bool = False):
    return self.quantizer(z, train)

  def decode(self, quantized: jax.Array) -> jax.Array:
    return self.decoder(quantized)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Code indices [B, h, w] -> decoded images [B, 4h, 4w, C]."""
    return self.decoder(self.quantizer.lookup(indices))


FAMILY = "vqvae"


def build(model_config, shape) -> dict:
  """{"vqvae"}: Sonnet's CIFAR-10 layout at widths `hidden` and `residual_width`, with a
  codebook of `num_codes` codes of `embedding_dim` values learnt at EMA `decay`."""
  if len(shape) != 3 or shape[0] % 4 or shape[1] % 4:
    raise UsageError(f"vqvae downsamples by 4: it needs a height and width divisible by 4, "
                     f"got {shape}.")
  for key in ("hidden", "residual_width", "embedding_dim", "num_codes"):
    checks.at_least(model_config[key], f"model.{key}", 1)
  checks.at_least(model_config.residual_blocks, "model.residual_blocks", 0)
  checks.in_range(model_config.decay, "model.decay", 0.0, 1.0, low_open=True, high_open=True)
  checks.positive(model_config.epsilon, "model.epsilon")
  return {"vqvae": VQVAE(
      tuple(shape), model_config.hidden, model_config.residual_blocks,
      model_config.residual_width, model_config.embedding_dim, model_config.num_codes,
      model_config.decay, model_config.epsilon, model_config.get("restart_threshold", 0.0),
      jnp.dtype(model_config.dtype))}
