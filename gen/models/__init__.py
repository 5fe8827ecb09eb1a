"""Flax linen modules, built from `config.model` and the dataset's example shape."""
import jax.numpy as jnp

from gen import UsageError
from gen.models import dcgan, mlp, vae

FAMILY = {"dcgan": "gan", "mlp_gan": "gan", "conv_vae": "vae"}


def build(model_config, shape) -> dict:
  """The named modules of a model: {"generator", "discriminator"} for GANs, {"vae"} for VAEs."""
  name = model_config.name
  if model_config.dtype not in ("float32", "bfloat16"):
    raise UsageError(f"config.model.dtype={model_config.dtype!r}; use 'float32' or 'bfloat16'.")
  dtype = jnp.dtype(model_config.dtype)
  if name == "dcgan":
    if shape[0] != shape[1] or shape[0] % 4:
      raise UsageError(f"dcgan needs square images with a side divisible by 4, got {shape}.")
    return {
        "generator": dcgan.Generator(tuple(model_config.generator_features), base=shape[0] // 4,
                                     channels=shape[-1], dtype=dtype),
        "discriminator": dcgan.Discriminator(tuple(model_config.discriminator_features),
                                             dtype=dtype),
    }
  if name == "mlp_gan":
    return {
        "generator": mlp.Generator(tuple(model_config.hidden), output_dim=shape[-1], dtype=dtype),
        "discriminator": mlp.Discriminator(tuple(model_config.hidden), dtype=dtype),
    }
  if name == "conv_vae":
    return {"vae": vae.VAE(tuple(shape), model_config.latent_dim, tuple(model_config.features),
                           dtype)}
  raise UsageError(f"Unknown config.model.name={name!r}; known: {sorted(FAMILY)}.")
