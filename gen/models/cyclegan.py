"""CycleGAN (Zhu et al. 2017): two ResNet generators and two PatchGAN discriminators.

The generator is the paper's (after Johnson et al. 2016): c7s1-k, two stride-2 3x3
convolutions (d2k, d4k), N residual blocks of two reflection-padded 3x3 convolutions at
width 4k, two stride-2 3x3 transposed convolutions (u2k, uk), c7s1-C and tanh; instance
normalisation and ReLU after every layer but the last. The paper has k = 64 and N = 6 at
128² or 9 at 256²; `generator_width` and `residual_blocks` set them for smaller images.

The discriminators are pix2pix's PatchGAN (gen.models.pix2pix) on one image: depth 3 is the
paper's 70x70 PatchGAN, depth 1 (16x16 patches) the scaled-down default for 32x32 images.

Modules: "generator" G: A → B, "inverse_generator" F: B → A, "discriminator" D_B (B's real
images against G's) and "inverse_discriminator" D_A (A's against F's). Both domains have
the data's image shape: the family's identity loss G(b) ≈ b needs it.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks
from gen.models.layers import Conv, ConvTranspose, ReflectConv
from gen.models.pix2pix import NORMS, PatchGAN, _norm, widths

GENERATOR_NORMS = ("instance", "none")  # BatchNorm statistics of G's three passes a step would mix.


class ResidualBlock(nn.Module):
  """x + norm(conv(relu(norm(conv(x))))), both 3x3 convolutions reflection-padded."""
  norm: str = "instance"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width, bias = x.shape[-1], self.norm == "none"
    h = _norm(self.norm, False, self.dtype)(ReflectConv(width, (3, 3), use_bias=bias,
                                                        dtype=self.dtype)(x))
    h = nn.relu(h)
    h = _norm(self.norm, False, self.dtype)(ReflectConv(width, (3, 3), use_bias=bias,
                                                        dtype=self.dtype)(h))
    return x + h


class ResnetGenerator(nn.Module):
  """images [B, H, W, C_in] in [-1, 1] -> images [B, H, W, channels] in [-1, 1]; H and W
  divisible by 4."""
  width: int = 64
  residual_blocks: int = 9
  channels: int = 3
  norm: str = "instance"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    bias = self.norm == "none"  # A norm right after a conv makes its bias redundant.
    norm = lambda h: _norm(self.norm, train, self.dtype)(h)
    h = nn.relu(norm(ReflectConv(self.width, (7, 7), use_bias=bias, dtype=self.dtype)(
        x.astype(self.dtype))))
    for factor in (2, 4):
      h = nn.relu(norm(Conv(self.width * factor, (3, 3), strides=(2, 2), use_bias=bias,
                            dtype=self.dtype)(h)))
    for _ in range(self.residual_blocks):
      h = ResidualBlock(self.norm, self.dtype)(h)
    for factor in (2, 1):
      h = nn.relu(norm(ConvTranspose(self.width * factor, (3, 3), strides=(2, 2), use_bias=bias,
                                     dtype=self.dtype)(h)))
    h = ReflectConv(self.channels, (7, 7), dtype=self.dtype)(h)
    return jnp.tanh(h.astype(jnp.float32))


FAMILY = "cyclegan"


def build(model_config, shape) -> dict:
  """{"generator", "inverse_generator": ResnetGenerator, "discriminator",
  "inverse_discriminator": PatchGAN} for images of `shape` [H, W, C] in both domains: the
  generators' width (the paper's 64), residual blocks (6 or 9) and norm, the discriminators'
  width, depth, norm and spectral normalisation."""
  if len(shape) != 3:
    raise UsageError(f"CycleGAN translates images [H, W, C]; the data's examples are {shape}.")
  if shape[0] % 4 or shape[1] % 4:
    raise UsageError(f"The ResNet generator's two stride-2 levels need a height and width "
                     f"divisible by 4, got {shape[:2]}.")
  width = checks.at_least(model_config.generator_width, "model.generator_width", 1)
  blocks = checks.at_least(model_config.residual_blocks, "model.residual_blocks", 0)
  g_norm = checks.one_of(model_config.generator_norm, "model.generator_norm", GENERATOR_NORMS)
  d_width = checks.at_least(model_config.discriminator_width, "model.discriminator_width", 1)
  d_depth = checks.at_least(model_config.discriminator_depth, "model.discriminator_depth", 1)
  if shape[0] % 2**d_depth or shape[1] % 2**d_depth:
    raise UsageError(f"config.model.discriminator_depth={d_depth}: {d_depth} stride-2 layers "
                     f"need a height and width divisible by {2**d_depth}, got {shape[:2]}.")
  d_norm = checks.one_of(model_config.discriminator_norm, "model.discriminator_norm", NORMS)
  dtype = jnp.dtype(model_config.dtype)
  generator = lambda: ResnetGenerator(width, blocks, shape[-1], g_norm, dtype)
  discriminator = lambda: PatchGAN(widths(d_width, d_depth + 1), norm=d_norm,
                                   spectral_norm=model_config.get("spectral_norm", False),
                                   dtype=dtype)
  return {"generator": generator(), "inverse_generator": generator(),
          "discriminator": discriminator(), "inverse_discriminator": discriminator()}
