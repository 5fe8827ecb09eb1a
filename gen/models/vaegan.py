"""VAE-GAN (Larsen et al. 2016): the convolutional VAE's encoder and decoder as encoder and
generator, and the DCGAN discriminator, trained by gen.families.vaegan."""
import jax.numpy as jnp

from gen import checks, models
from gen.models import conv_vae, dcgan

FAMILY = "vaegan"


def build(model_config, shape) -> dict:
  """{"encoder", "generator", "discriminator"}: the encoder's widths `features` (the generator
  mirrors them) and the discriminator's `discriminator_features`."""
  features = checks.widths(model_config.features, "model.features")
  checks.at_least(model_config.latent_dim, "model.latent_dim", 1)
  dtype = jnp.dtype(model_config.dtype)
  return {
      "encoder": conv_vae.Encoder(model_config.latent_dim, features, dtype),
      "generator": conv_vae.Decoder(tuple(shape), tuple(reversed(features)), dtype),
      "discriminator": dcgan.discriminator(model_config, dtype,
                                           **models.gan_conditioning(model_config)),
  }
