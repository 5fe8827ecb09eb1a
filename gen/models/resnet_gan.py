"""The SNGAN ResNet generator and discriminator for 32x32 images.

Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral Normalization for Generative Adversarial
Networks", Appendix B.4, Table 4 (the CIFAR-10 ResNet), as in the authors' chainer
sngan_projection (gen_models/resnet_32.py, dis_models/snresnet_32.py) and Mimicry's SNGAN 32:
a 4x4x256 seed upsampled by three residual blocks for the generator (about 4.3M parameters),
four residual blocks of width 128 and a global sum pool for the discriminator (about 1.05M).

Initialisers follow the reference: Glorot-uniform with gain sqrt(2) for the blocks' 3x3
convolutions (they feed ReLUs), gain 1 for the 1x1 shortcuts, the latent projection and
the generator's output convolution. The discriminator's head (`DiscriminatorHead`) keeps
flax's defaults.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks, models
from gen.models.layers import Conv, ConditionalBatchNorm, DiscriminatorHead, maybe_spectral_norm

# Glorot uniform with gain g is variance_scaling(g², "fan_avg", "uniform"); flax's fans for
# an HWIO kernel count the receptive field, as chainer's and torch's do.
_GLOROT_RELU = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
_GLOROT = nn.initializers.xavier_uniform()


def _upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 over H and W: one broadcast and reshape, no gather."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def _downsample(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class GBlock(nn.Module):
  """Generator residual block: BN -> ReLU -> up x2 -> conv3x3 -> BN -> ReLU -> conv3x3,
  plus a learnable shortcut up x2 -> conv1x1 (the reference always upsamples, so always
  has it)."""
  features: int
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    def bn(h, name):
      # Class-conditional scale and offset when conditional (de Vries et al. 2017, as the
      # reference's CategoricalConditionalBatchNormalization). Momentum 0.9 is chainer's
      # decay; epsilon 1e-5 is ConditionalBatchNorm's and torch's (chainer: 2e-5).
      if self.num_classes:
        return ConditionalBatchNorm(self.num_classes, dtype=self.dtype, name=name)(h, labels, train)
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype, name=name)(h)

    # No biases: every one would feed a BatchNorm (this block's, the next block's or the
    # last one), which subtracts it; its gradient would be rounding noise that Adam turns
    # into full-size steps.
    conv = lambda k, init, name: Conv(self.features, (k, k), use_bias=False, kernel_init=init,
                                      dtype=self.dtype, name=name)
    h = nn.relu(bn(x, "bn1"))
    h = conv(3, _GLOROT_RELU, "conv1")(_upsample(h))
    h = nn.relu(bn(h, "bn2"))
    h = conv(3, _GLOROT_RELU, "conv2")(h)
    return h + conv(1, _GLOROT, "shortcut")(_upsample(x))


class Generator(nn.Module):
  """z [B, latent] (and labels [B] when num_classes > 0) -> images [B, 32, 32, channels] in
  [-1, 1] (8·base pixels square)."""
  width: int = 256
  base: int = 4  # z -> base x base x width; three up-blocks give 8·base pixels.
  channels: int = 3
  num_classes: int = 0  # > 0: class-conditional BatchNorm in every block (ConditionalBatchNorm).
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None,
               train: bool = True) -> jax.Array:
    if self.num_classes and labels is None:
      raise ValueError("A class-conditional Generator needs labels.")
    # The labels enter through the blocks' BatchNorm only, not appended to z (as in the
    # reference's conditional generator).
    x = nn.Dense(self.base * self.base * self.width, use_bias=False, kernel_init=_GLOROT,
                 dtype=self.dtype)(z)  # No bias: block 0's BatchNorm follows.
    x = x.reshape(z.shape[0], self.base, self.base, self.width)
    for _ in range(3):
      x = GBlock(self.width, self.num_classes, self.dtype)(x, labels, train)
    # The reference's last BatchNorm is unconditional even in the conditional model.
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)(x))
    x = Conv(self.channels, (3, 3), kernel_init=_GLOROT, dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


def _discriminator_conv(block: nn.Module, train: bool):
  """conv(k, init, name): a block's k x k convolution of its width, spectrally normalised
  where the block is."""
  return lambda k, init, name: maybe_spectral_norm(
      Conv(block.features, (k, k), kernel_init=init, dtype=block.dtype, name=name),
      block.spectral_norm, train)


class OptimizedDisBlock(nn.Module):
  """The discriminator's first block, on the image: conv3x3 -> ReLU -> conv3x3 -> avgpool,
  shortcut avgpool -> conv1x1 (no ReLU before the first convolution, which would clip the
  image)."""
  features: int
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _discriminator_conv(self, train)
    h = conv(3, _GLOROT_RELU, "conv1")(x)
    h = conv(3, _GLOROT_RELU, "conv2")(nn.relu(h))
    return _downsample(h) + conv(1, _GLOROT, "shortcut")(_downsample(x))


class DBlock(nn.Module):
  """Discriminator residual block: ReLU -> conv3x3 -> ReLU -> conv3x3 [-> avgpool]; a
  learnable 1x1 shortcut only where it downsamples or changes the width, else identity."""
  features: int
  downsample: bool = False
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = _discriminator_conv(self, train)
    h = conv(3, _GLOROT_RELU, "conv1")(nn.relu(x))
    h = conv(3, _GLOROT_RELU, "conv2")(nn.relu(h))
    if self.downsample:
      h = _downsample(h)
    shortcut = x
    if self.downsample or x.shape[-1] != self.features:
      # The reference convolves then pools; a 1x1 convolution (bias included) commutes with
      # 2x2 average pooling, so pooling first is the same function at a quarter the cost.
      if self.downsample:
        shortcut = _downsample(shortcut)
      shortcut = conv(1, _GLOROT, "shortcut")(shortcut)
    return h + shortcut


class Discriminator(nn.Module):
  """images [B, H, W, C] (and labels [B]) -> (logits [B] float32, class_logits [B, K] float32
  or None)."""
  width: int = 128
  num_classes: int = 0
  conditioning: str = "none"  # "none" | "projection" | "acgan": see layers.DiscriminatorHead.
  spectral_norm: bool = True
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    sn, dtype = self.spectral_norm, self.dtype
    x = OptimizedDisBlock(self.width, sn, dtype)(x, train)
    x = DBlock(self.width, downsample=True, spectral_norm=sn, dtype=dtype)(x, train)
    x = DBlock(self.width, spectral_norm=sn, dtype=dtype)(x, train)
    x = DBlock(self.width, spectral_norm=sn, dtype=dtype)(x, train)
    # Global sum pooling (not mean), as the reference; summed in float32, since 64 bfloat16
    # terms would lose about 3 bits.
    features = jnp.sum(nn.relu(x).astype(jnp.float32), axis=(1, 2))
    head = DiscriminatorHead(num_classes=self.num_classes, conditioning=self.conditioning,
                             spectral_norm=sn, dtype=dtype)
    return head(features, labels, train)


FAMILY = "gan"


def build(model_config, shape) -> dict:
  """{"generator", "discriminator"} of widths generator_width and discriminator_width."""
  if len(shape) != 3 or shape[0] != shape[1] or shape[0] % 8:
    raise UsageError(f"resnet_gan needs square images with a side divisible by 8, got {shape}.")
  checks.at_least(model_config.generator_width, "model.generator_width", 1)
  checks.at_least(model_config.discriminator_width, "model.discriminator_width", 1)
  checks.at_least(model_config.latent_dim, "model.latent_dim", 1)
  conditioning = models.gan_conditioning(model_config)
  dtype = jnp.dtype(model_config.dtype)
  return {
      "generator": Generator(model_config.generator_width, base=shape[0] // 8,
                             channels=shape[-1], num_classes=conditioning["num_classes"],
                             dtype=dtype),
      "discriminator": Discriminator(model_config.discriminator_width, dtype=dtype,
                                     **conditioning),
  }
