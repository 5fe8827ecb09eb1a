"""Flax linen modules, built from `config.model` and the dataset's example shape."""
import jax.numpy as jnp

from gen import UsageError
from gen.models import dcgan, mlp, resnet, vae, vqvae
from gen.models.layers import CONDITIONING

FAMILY = {"dcgan": "gan", "mlp_gan": "gan", "resnet_gan": "gan", "vaegan": "vaegan",
          "conv_vae": "vae", "vqvae": "vqvae"}
_BUILT_IN = dict(FAMILY)
# Models added from outside gen with `register`: name -> build(model_config, shape) -> modules.
_REGISTERED = {}


def register(name: str, build_fn, family: str) -> None:
  """Makes `config.model.name = name` build `build_fn(model_config, shape)`, trained by the
  train step of `family` ("gan", "vae", "vaegan" or "vqvae").

  build_fn returns the family's named linen modules, called as the family calls its own:
  for "gan", {"generator": z [B, latent] (labels [B] or None, train=bool) -> examples
  [B, *shape] in [-1, 1], "discriminator": (examples, labels, train=bool) -> (logits [B],
  class logits or None)}, reading `model_config.latent_dim`. The registration lasts for this
  process: a command line that trains or samples the model must register it first too.
  Registering a name again replaces it; gen's own names cannot be replaced.
  """
  if name in _BUILT_IN:
    raise ValueError(f"{name!r} is one of gen's own models; register under another name.")
  families = sorted(set(_BUILT_IN.values()))
  if family not in families:
    raise ValueError(f"Unknown family {family!r}; use one of {families}.")
  FAMILY[name] = family
  _REGISTERED[name] = build_fn


def _gan_conditioning(model_config) -> dict:
  """The class-conditioning arguments of a GAN's discriminator, checked."""
  num_classes = model_config.get("num_classes", 0)
  conditioning = model_config.get("conditioning", "none")
  if conditioning not in CONDITIONING:
    raise UsageError(f"config.model.conditioning={conditioning!r}; use one of {CONDITIONING}.")
  if bool(num_classes) != (conditioning != "none"):
    raise UsageError(
        f"config.model.num_classes={num_classes} with conditioning={conditioning!r}: a "
        "conditional model needs both num_classes > 0 and conditioning 'projection' or "
        "'acgan'; an unconditional one num_classes=0 and conditioning 'none'.")
  return {"num_classes": num_classes, "conditioning": conditioning,
          "spectral_norm": model_config.get("spectral_norm", False)}


def build(model_config, shape) -> dict:
  """The named modules of a model: {"generator", "discriminator"} for GANs, {"vae"} for VAEs;
  a registered model's are its build function's."""
  name = model_config.name
  if model_config.dtype not in ("float32", "bfloat16"):
    raise UsageError(f"config.model.dtype={model_config.dtype!r}; use 'float32' or 'bfloat16'.")
  dtype = jnp.dtype(model_config.dtype)
  if name in _REGISTERED:
    return _REGISTERED[name](model_config, shape)
  if name == "dcgan":
    features = tuple(model_config.generator_features)
    scale = 2 ** len(features[1:])
    if shape[0] != shape[1] or shape[0] % scale:
      raise UsageError(f"dcgan with {len(features)} generator widths needs square images with "
                       f"a side divisible by {scale}, got {shape}.")
    conditioning = _gan_conditioning(model_config)
    return {
        "generator": dcgan.Generator(features, base=shape[0] // scale, channels=shape[-1],
                                     num_classes=conditioning["num_classes"], dtype=dtype),
        "discriminator": dcgan.Discriminator(tuple(model_config.discriminator_features),
                                             dropout=model_config.get("dropout", 0.3),
                                             dtype=dtype, **conditioning),
    }
  if name == "mlp_gan":
    conditioning = _gan_conditioning(model_config)
    slope = model_config.get("negative_slope", 0.2)
    return {
        "generator": mlp.Generator(tuple(model_config.hidden), shape=tuple(shape),
                                   negative_slope=model_config.get("generator_negative_slope", 0.0),
                                   num_classes=conditioning["num_classes"], dtype=dtype),
        "discriminator": mlp.Discriminator(tuple(model_config.hidden), negative_slope=slope,
                                           dtype=dtype, **conditioning),
    }
  if name == "resnet_gan":
    if shape[0] != shape[1] or shape[0] % 8:
      raise UsageError(f"resnet_gan needs square images with a side divisible by 8, got {shape}.")
    conditioning = _gan_conditioning(model_config)
    return {
        "generator": resnet.Generator(model_config.generator_width, base=shape[0] // 8,
                                      channels=shape[-1], num_classes=conditioning["num_classes"],
                                      dtype=dtype),
        "discriminator": resnet.Discriminator(model_config.discriminator_width, dtype=dtype,
                                              **conditioning),
    }
  if name == "vaegan":
    # The VAE's encoder and decoder, and the GAN family's DCGAN discriminator.
    conditioning = _gan_conditioning(model_config)
    features = tuple(model_config.features)
    return {
        "encoder": vae.Encoder(model_config.latent_dim, features, dtype),
        "generator": vae.Decoder(tuple(shape), tuple(reversed(features)), dtype),
        "discriminator": dcgan.Discriminator(tuple(model_config.discriminator_features),
                                             dropout=model_config.get("dropout", 0.3),
                                             dtype=dtype, **conditioning),
    }
  if name == "conv_vae":
    from gen import losses  # The likelihoods' parameter counts live beside their densities.
    likelihood = model_config.get("likelihood", "bernoulli")
    if likelihood not in losses.LIKELIHOODS:
      raise UsageError(f"Unknown config.model.likelihood={likelihood!r}; "
                       f"known: {sorted(losses.LIKELIHOODS)}.")
    return {"vae": vae.VAE(tuple(shape), model_config.latent_dim, tuple(model_config.features),
                           dtype, num_classes=model_config.get("num_classes", 0),
                           outputs_per_channel=losses.LIKELIHOODS[likelihood])}
  if name == "vqvae":
    if shape[0] % 4 or shape[1] % 4:
      raise UsageError(f"vqvae downsamples by 4: it needs a height and width divisible by 4, "
                       f"got {shape}.")
    if not 0.0 < model_config.decay < 1.0:
      raise UsageError(f"config.model.decay={model_config.decay} must be in (0, 1).")
    return {"vqvae": vqvae.VQVAE(
        tuple(shape), model_config.hidden, model_config.residual_blocks,
        model_config.residual_width, model_config.embedding_dim, model_config.num_codes,
        model_config.decay, model_config.epsilon, model_config.get("restart_threshold", 0.0),
        dtype)}
  raise UsageError(f"Unknown config.model.name={name!r}; known: {sorted(FAMILY)}.")
