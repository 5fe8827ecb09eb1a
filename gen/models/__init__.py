"""Flax linen modules, built by name from `config.model` and the dataset's example shape.

`config.model.name = "dcgan"` builds gen/models/dcgan.py: each model file holds its modules,
`FAMILY` (the gen.families module that trains them) and `build(model_config, shape) ->
{module name: linen module}`, which checks the model's config values. Models defined outside
gen are added with `register`.
"""
import importlib
import pkgutil

from gen import UsageError, checks

# Models added from outside gen with `register`: name -> (build function, family).
_REGISTERED = {}
_NOT_GENERATIVE = {"classifier", "inception", "layers"}  # Files of parts, not models.


def register(name: str, build_fn, family: str) -> None:
  """Makes `config.model.name = name` build `build_fn(model_config, shape)`, trained by
  `family` (one of gen.families, or one registered with gen.families.register; an unknown
  one fails when the experiment is built).

  build_fn returns the family's named linen modules, called as the family calls its own:
  for "gan", {"generator": z [B, latent] (labels [B] or None, train=bool) -> examples
  [B, *shape] in [-1, 1], "discriminator": (examples, labels, train=bool) -> (logits [B],
  class logits or None)}, reading `model_config.latent_dim`. The registration lasts for this
  process: a command line that trains or samples the model must register it first too.
  Registering a name again replaces it; gen's own names cannot be replaced.
  """
  if name in builtin():
    raise ValueError(f"{name!r} is one of gen's own models; register under another name.")
  _REGISTERED[name] = (build_fn, family)


def builtin() -> list[str]:
  """The names of gen's own models: the model files of this package."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__)
                if info.name not in _NOT_GENERATIVE)


def known() -> list[str]:
  return sorted({*builtin(), *_REGISTERED})


def _lookup(name: str):
  """(build function, family name) of the model called `name`."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in builtin():
    raise UsageError(f"Unknown config.model.name={name!r}; known: {known()}.")
  module = importlib.import_module(f"{__name__}.{name}")
  return module.build, module.FAMILY


def family(model_config) -> str:
  """The name of the family that trains the model of `model_config`."""
  return _lookup(model_config.name)[1]


def build(model_config, shape) -> dict:
  """The named modules of the model `model_config.name`, for examples of `shape`."""
  checks.one_of(model_config.dtype, "model.dtype", ("float32", "bfloat16"))
  return _lookup(model_config.name)[0](model_config, tuple(shape))


def num_classes(model_config) -> int:
  """Classes of a conditional model, 0 for an unconditional one."""
  return model_config.get("num_classes", 0)


def gan_conditioning(model_config) -> dict:
  """The class-conditioning arguments of a GAN's discriminator, checked."""
  from gen.models.layers import CONDITIONING
  classes = num_classes(model_config)
  conditioning = model_config.get("conditioning", "none")
  if conditioning not in CONDITIONING:
    raise UsageError(f"config.model.conditioning={conditioning!r}; use one of {CONDITIONING}.")
  checks.at_least(classes, "model.num_classes", 0)
  if bool(classes) != (conditioning != "none"):
    raise UsageError(
        f"config.model.num_classes={classes} with conditioning={conditioning!r}: a "
        "conditional model needs both num_classes > 0 and conditioning 'projection' or "
        "'acgan'; an unconditional one num_classes=0 and conditioning 'none'.")
  return {"num_classes": classes, "conditioning": conditioning,
          "spectral_norm": model_config.get("spectral_norm", False)}
