"""InfoGAN (Chen et al. 2016) on the DCGAN layers: a generator given latent codes beside its
noise, and a discriminator whose trunk also feeds Q, the codes' posterior.

The generator is gen.models.dcgan's, fed [noise, continuous codes] with the categorical code
appended one-hot (as a conditional DCGAN appends its class). The discriminator is DCGAN's
strided convolutions (the trunk), then two heads on the same features: D's real/fake logit
(spectrally normalised with the trunk when `spectral_norm` is set) and Q, a hidden layer and
the categorical code's logits, the continuous codes' means and log-std.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks
from gen.models import dcgan
from gen.models.layers import DiscriminatorHead


class Discriminator(nn.Module):
  """images [B, H, W, C] -> (logits [B], Q's outputs {"categorical" [B, K], "mean" [B, C],
  "log_std" [B, C]}). Unconditional: labels are ignored."""
  features: Sequence[int] = (64, 128)
  categorical: int = 10
  continuous: int = 2
  q_hidden: int = 128
  kernel_size: int = 5
  negative_slope: float = 0.3
  dropout: float = 0.3
  spectral_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    trunk = dcgan.strided_trunk(self, x, train)
    logits, _ = DiscriminatorHead(0, "none", self.spectral_norm, self.dtype)(trunk, None, train)
    q = act(nn.Dense(self.q_hidden, dtype=self.dtype, name="q_hidden")(trunk))
    q = nn.Dense(self.categorical + 2 * self.continuous, dtype=self.dtype, name="q_out")(q)
    q = q.astype(jnp.float32)
    k, c = self.categorical, self.continuous
    return logits, {"categorical": q[:, :k], "mean": q[:, k:k + c], "log_std": q[:, k + c:]}


FAMILY = "infogan"


def codes(model_config) -> tuple[int, int]:
  """(categorical classes K, continuous codes C) of `model_config`, checked."""
  categorical = checks.at_least(model_config.categorical_codes, "model.categorical_codes", 2)
  continuous = checks.at_least(model_config.continuous_codes, "model.continuous_codes", 0)
  return categorical, continuous


def build(model_config, shape) -> dict:
  """{"generator", "discriminator"}: DCGAN's widths (generator_features,
  discriminator_features, dropout), `latent_dim` noise dimensions, `categorical_codes` K,
  `continuous_codes` C and Q's hidden width `q_hidden`."""
  categorical, continuous = codes(model_config)
  if model_config.get("num_classes", 0) or model_config.get("conditioning", "none") != "none":
    raise UsageError("InfoGAN is unconditional: its categorical code takes the place of a "
                     "class; set config.model.categorical_codes, and num_classes=0.")
  base = dcgan.build(model_config, shape)  # Checks the widths, latent_dim and the image shape.
  q_hidden = checks.at_least(model_config.q_hidden, "model.q_hidden", 1)
  return {
      "generator": base["generator"].clone(num_classes=categorical),
      "discriminator": Discriminator(
          base["discriminator"].features, categorical, continuous, q_hidden,
          dropout=base["discriminator"].dropout, spectral_norm=model_config.get(
              "spectral_norm", False), dtype=base["discriminator"].dtype),
  }
