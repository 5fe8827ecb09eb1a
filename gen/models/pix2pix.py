"""pix2pix (Isola et al. 2017): a U-Net generator and a PatchGAN discriminator of pairs.

The generator encodes the input with `depth` stride-2 4x4 convolutions (widths
width·min(2^i, 8), as the paper's C64-C128-C256-C512-...; leaky ReLU 0.2; no normalisation
on the first and the innermost) down to a 1x1 bottleneck by default (depth log2 of the
side: 8 at 256², 5 at 32²), and decodes with as many stride-2 transposed convolutions
(ReLU), each followed by the encoder's output of the same size on the channels (the skip
connections), ending in tanh. Dropout on the first `dropout_layers` decoder layers is the
model's only noise, as in the paper, where it stays on at test time.

The discriminator is the paper's PatchGAN on the (input, output) pair concatenated on the
channels: `depth` stride-2 4x4 convolutions, then a stride-1 one and the stride-1 logit
layer, so that each logit sees a `receptive_field(depth)`-pixel square patch (depth 3 is the
70x70 PatchGAN; depth 1, 16x16, is the scaled-down default for 32x32 images).

Normalisation is "batch" (BatchNorm, the paper's), "instance" (InstanceNorm) or "none",
chosen for each network. Both are built from gen's convolutions (gen.models.layers).
"""
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks
from gen.models.layers import Conv, ConvTranspose, Dropout, InstanceNorm, maybe_spectral_norm

NORMS = ("batch", "instance", "none")
KERNEL = 4  # The paper's 4x4 kernels throughout.


def widths(base: int, depth: int) -> tuple[int, ...]:
  """The paper's widths base·min(2^i, 8), i = 0..depth-1: 64, 128, 256, 512, 512, ..."""
  return tuple(base * min(2**i, 8) for i in range(depth))


def receptive_field(depth: int, kernel: int = KERNEL) -> int:
  """The side of the input square that one PatchGAN logit sees: the two stride-1 layers
  after `depth` stride-2 ones; 16, 34, 70, 142 for depths 1-4."""
  side = 1 + 2 * (kernel - 1)
  for _ in range(depth):
    side = (side - 1) * 2 + kernel
  return side


def _norm(kind: str, train: bool, dtype):
  """The normalisation layer of `kind` (identity for "none"); BatchNorm with PyTorch's
  momentum and epsilon, which the paper's code used."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  if kind == "instance":
    return InstanceNorm(epsilon=1e-5, dtype=dtype)
  return lambda x: x


class UNet(nn.Module):
  """images [B, H, W, C_in] in [-1, 1] -> images [B, H, W, channels] in [-1, 1].

  `dropout_noise` turns the decoder's dropout on (None: when training); the family keeps it
  on when translating, as the paper does.
  """
  features: Sequence[int] = (64, 128, 256, 512, 512)  # One per encoder level, outermost first.
  channels: int = 1
  norm: str = "batch"
  dropout: float = 0.5
  dropout_layers: int = 3  # Decoder layers with dropout, from the innermost.
  negative_slope: float = 0.2
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, dropout_noise: bool | None = None
               ) -> jax.Array:
    noise = train if dropout_noise is None else dropout_noise
    k, s = (KERNEL, KERNEL), (2, 2)
    depth = len(self.features)
    skips = []
    h = x.astype(self.dtype)
    for level, width in enumerate(self.features):
      if level:
        h = nn.leaky_relu(h, self.negative_slope)
      # A norm right after the conv makes its bias redundant.
      normalised = 0 < level < depth - 1 and self.norm != "none"
      h = Conv(width, k, strides=s, use_bias=not normalised, dtype=self.dtype)(h)
      if normalised:
        h = _norm(self.norm, train, self.dtype)(h)
      skips.append(h)
    for i, skip in enumerate(reversed(skips[:-1])):
      h = ConvTranspose(skip.shape[-1], k, strides=s, use_bias=self.norm == "none",
                        dtype=self.dtype)(nn.relu(h))
      h = _norm(self.norm, train, self.dtype)(h)
      if i < self.dropout_layers:
        h = Dropout(self.dropout, deterministic=not noise)(h)
      h = jnp.concatenate([skip, h], axis=-1)
    h = ConvTranspose(self.channels, k, strides=s, dtype=self.dtype)(nn.relu(h))
    return jnp.tanh(h.astype(jnp.float32))


class PatchGAN(nn.Module):
  """pairs [B, H, W, C_in + C_out] (the input and an output, concatenated on the channels)
  -> (logits [B, H/2^depth, W/2^depth], one per patch; None: it has no class logits)."""
  features: Sequence[int] = (64, 128, 256, 512)  # depth stride-2 layers, then a stride-1 one.
  norm: str = "instance"
  negative_slope: float = 0.2
  spectral_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    k = (KERNEL, KERNEL)
    depth = len(self.features) - 1
    h = x.astype(self.dtype)
    for level, width in enumerate(self.features):
      normalised = level > 0 and self.norm != "none"
      conv = Conv(width, k, strides=(2, 2) if level < depth else (1, 1),
                  use_bias=not normalised, dtype=self.dtype)
      h = maybe_spectral_norm(conv, self.spectral_norm, train)(h)
      if normalised:
        h = _norm(self.norm, train, self.dtype)(h)
      h = nn.leaky_relu(h, self.negative_slope)
    logits = maybe_spectral_norm(Conv(1, k, dtype=self.dtype), self.spectral_norm, train)(h)
    return logits[..., 0].astype(jnp.float32), None


FAMILY = "pix2pix"


def generator_depth(model_config, shape) -> int:
  """`model.generator_depth`, or where it is 0 the depth that brings the image down to 1x1
  (log2 of its side); checked against the image's size."""
  side = min(shape[0], shape[1])
  depth = model_config.generator_depth or int(math.log2(side))
  checks.at_least(depth, "model.generator_depth", 1)
  if shape[0] % 2**depth or shape[1] % 2**depth:
    raise UsageError(f"config.model.generator_depth={depth}: a U-Net of {depth} stride-2 levels "
                     f"needs a height and width divisible by {2**depth}, got {shape[:2]}; set "
                     f"generator_depth to at most log2 of the side's largest power-of-two factor.")
  return depth


def build(model_config, shape) -> dict:
  """{"generator": UNet, "discriminator": PatchGAN} for images of `shape` [H, W, C]: widths
  from generator_width and discriminator_width (the paper's 64), depths from
  generator_depth (0: down to 1x1) and discriminator_depth (3: 70x70 patches), the norms,
  the decoder's dropout (rate, layers) and spectral normalisation of the discriminator."""
  if len(shape) != 3:
    raise UsageError(f"pix2pix translates images [H, W, C]; the data's examples are {shape}.")
  depth = generator_depth(model_config, shape)
  generator_width = checks.at_least(model_config.generator_width, "model.generator_width", 1)
  discriminator_width = checks.at_least(model_config.discriminator_width,
                                        "model.discriminator_width", 1)
  d_depth = checks.at_least(model_config.discriminator_depth, "model.discriminator_depth", 1)
  if shape[0] % 2**d_depth or shape[1] % 2**d_depth:
    raise UsageError(f"config.model.discriminator_depth={d_depth}: {d_depth} stride-2 layers "
                     f"need a height and width divisible by {2**d_depth}, got {shape[:2]}.")
  g_norm = checks.one_of(model_config.generator_norm, "model.generator_norm", NORMS)
  d_norm = checks.one_of(model_config.discriminator_norm, "model.discriminator_norm", NORMS)
  dropout = checks.in_range(model_config.dropout, "model.dropout", 0.0, 1.0, high_open=True)
  dropout_layers = checks.at_least(model_config.dropout_layers, "model.dropout_layers", 0)
  if dropout_layers > depth - 1:
    raise UsageError(f"config.model.dropout_layers={dropout_layers}: the U-Net has {depth - 1} "
                     f"decoder layers before its output layer.")
  dtype = jnp.dtype(model_config.dtype)
  return {
      "generator": UNet(widths(generator_width, depth), channels=shape[-1], norm=g_norm,
                        dropout=dropout, dropout_layers=dropout_layers, dtype=dtype),
      "discriminator": PatchGAN(widths(discriminator_width, d_depth + 1), norm=d_norm,
                                spectral_norm=model_config.get("spectral_norm", False),
                                dtype=dtype),
  }
