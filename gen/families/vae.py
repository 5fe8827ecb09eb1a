"""The VAE family: one gradient step on a variational bound, reparameterised, in nats.

The objective comes from `config.vae` (see `options`): the ELBO with the analytic KL, a KL
weight β, KL warm-up and free bits, or the importance-weighted bound (IWAE). The likelihood is
`config.model.likelihood` (one of losses.LIKELIHOODS), and `config.model.num_classes` > 0
makes the VAE conditional on labels (CVAE): batches' labels go to encoder and decoder.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen import UsageError, checks, data, losses, writers
from gen.families import (EvalGroup, ModuleState, TrainState, alternate, init_variables,
                          median_range, num_classes, options_block, render_examples)

OBJECTIVES = ("elbo", "iwae")
# Bounds of the decoder's log-scales (learned Gaussian and logistic), as in PixelCNN++'s -7.
LOG_SCALE_RANGE = (-7.0, 2.0)


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.vae`: the VAE objective, with the given values changed.

  Every key is present in every VAE config, so any of them can be set from the command line
  (`--config.vae.beta=4`). The defaults are the plain ELBO.
  """
  return options_block("VAE", {
      "objective": "elbo",  # Or "iwae": the importance-weighted bound (Burda et al. 2016).
      "iwae_samples": 1,  # K posterior samples per example for objective "iwae".
      "beta": 1.0,  # The KL's weight (β-VAE, Higgins et al. 2017); 1 is the ELBO.
      "kl_warmup_steps": 0,  # The KL weight ramps linearly from 0 to beta over these steps; 0: off.
      "free_bits": 0.0,  # λ nats per latent dimension (Kingma et al. 2016); 0: off.
  }, overrides)


def _options(config) -> ml_collections.ConfigDict:
  """config.vae, or the defaults for a config written before it existed."""
  return config.vae if "vae" in config else options()


def validate(config):
  """Raises UsageError for VAE options that cannot work, before anything is compiled (the
  likelihood and the model's sizes are checked where the model is built)."""
  vae = _options(config)
  checks.one_of(vae.objective, "vae.objective", OBJECTIVES)
  checks.at_least(vae.iwae_samples, "vae.iwae_samples", 1)
  checks.at_least(vae.kl_warmup_steps, "vae.kl_warmup_steps", 0)
  checks.in_range(vae.free_bits, "vae.free_bits", 0.0, float("inf"))
  checks.in_range(vae.beta, "vae.beta", 0.0, float("inf"))
  if vae.objective == "iwae" and vae.free_bits:
    raise UsageError("config.vae.free_bits clamps the ELBO's KL; the IWAE bound has none: "
                     "set free_bits=0 or objective='elbo'.")
  if "likelihood" in config.eval.get("metrics", ()):
    checks.at_least(config.eval.iwae_samples, "eval.iwae_samples", 1)


def batch_spec(config, dataset) -> dict:
  """Examples "x" and, for a conditional VAE, their classes "label"."""
  spec = {"x": dataset.spec["x"]}
  if num_classes(config):
    spec["label"] = dataset.spec["label"]
  return spec


def _labels(config, labels):
  """The labels a conditional model is given (None for an unconditional one)."""
  if not num_classes(config):
    return None
  if labels is None:
    raise UsageError("This VAE is conditional (config.model.num_classes > 0): it needs labels.")
  return labels


def _split_scale(decoded):
  """Decoder output [..., 2C] -> (means, log-scales bounded smoothly to LOG_SCALE_RANGE)."""
  mean, raw_log_scale = jnp.split(decoded, 2, axis=-1)
  return mean, losses.soft_clamp(raw_log_scale, *LOG_SCALE_RANGE)


def _log_likelihood(model_config, decoded, target):
  """log p(target | decoder output) [B] in nats; target in [0, 1]."""
  likelihood = model_config.likelihood
  if likelihood == "bernoulli":
    return losses.bernoulli_log_likelihood(decoded, target)
  if likelihood == "gaussian":
    return losses.gaussian_log_likelihood(decoded, target, jnp.log(model_config.observation_std))
  if likelihood == "gaussian_learned":
    mean, log_scale = _split_scale(decoded)
    return losses.gaussian_log_likelihood(mean, target, log_scale)
  if likelihood == "logistic":
    # 256 bins: the targets are read as 8-bit images (digits' 17 levels fall on bins too).
    mean, log_scale = _split_scale(decoded)
    return losses.discretized_logistic_log_likelihood(mean, log_scale, target)
  raise UsageError(f"Unknown config.model.likelihood={likelihood!r}; "
                   f"known: {sorted(losses.LIKELIHOODS)}.")


def _decode_mean(vae, model_config, params, z, labels=None):
  """The likelihood's mean (the logistic's location) for codes z [B, latent], in model space."""
  decoded = vae.apply(params, z, labels, method=vae.decode)
  if model_config.likelihood == "bernoulli":
    mean = jax.nn.sigmoid(decoded)
  elif losses.LIKELIHOODS[model_config.likelihood] == 2:
    mean, _ = _split_scale(decoded)
  else:
    mean = decoded
  return jnp.clip(mean, 0.0, 1.0) * 2.0 - 1.0


def posterior_samples(mean, log_var, key, num_samples: int):
  """z [K, B, latent] ~ q(z|x) = N(mean, exp(log_var)), reparameterised."""
  noise = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * noise


def _log_weight_terms(vae, model_config, params, x, labels, mean, log_var, z):
  """(log p(x|z_k), log p(z_k) - log q(z_k|x)), each [K, B], for codes z [K, B, latent]."""
  num, batch = z.shape[:2]
  decoded = vae.apply(params, z.reshape(num * batch, -1),
                      None if labels is None else jnp.tile(labels, num), method=vae.decode)
  target = jnp.broadcast_to(data.to_unit_range(x), (num, *x.shape)).reshape(num * batch, *x.shape[1:])
  log_likelihood = _log_likelihood(model_config, decoded, target).reshape(num, batch)
  return log_likelihood, (losses.gaussian_log_density(z)
                          - losses.gaussian_log_density(z, mean, log_var))


def kl_weight(step, beta: float, warmup_steps: int) -> jax.Array:
  """The KL's weight at `step` (0 at the first update): β·min(1, step / warmup_steps), or β
  throughout when warm-up is off."""
  if not warmup_steps:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def init_state(models, optimizers, config, spec, key) -> TrainState:
  init_key, sample_key, rng = jax.random.split(key, 3)
  labels = jnp.zeros((1,), jnp.int32) if num_classes(config) else None
  params, _ = init_variables(models["vae"], init_key, jnp.zeros((1, *spec["x"].shape)),
                             sample_key, labels)
  return TrainState.create(rng, {"vae": ModuleState.create(params, optimizers["vae"])})


def make_loss(models, config):
  """loss(params, batch, rng, step) -> (loss, metrics): the objective of `config.vae` at train
  step `step`, and per-example metrics in nats: the true ELBO (analytic KL, weight 1, no free
  bits), its reconstruction and KL terms, the KL weight, and for IWAE the bound itself."""
  vae, options_ = models["vae"], _options(config)
  iwae = options_.objective == "iwae"
  num_samples = options_.iwae_samples if iwae else 1

  def loss(params, batch, rng, step):
    x, labels = batch["x"], _labels(config, batch.get("label"))
    variables = {"params": params}
    mean, log_var = vae.apply(variables, x, labels, method=vae.encode)
    z = posterior_samples(mean, log_var, rng, num_samples)
    log_likelihood, log_prior_ratio = _log_weight_terms(vae, config.model, variables, x, labels,
                                                        mean, log_var, z)
    kl_per_dimension = losses.gaussian_kl_per_dimension(mean, log_var)
    kl = kl_per_dimension.sum(-1)
    weight = kl_weight(step, options_.beta, options_.kl_warmup_steps)
    metrics = {"elbo": (log_likelihood[0] - kl).mean(), "reconstruction": -log_likelihood[0].mean(),
               "kl": kl.mean(), "kl_weight": weight}
    if iwae:
      # β and warm-up weigh log p(z) - log q(z|x) in every weight: at K=1 the β-ELBO's sample.
      bound = losses.importance_weighted_bound(log_likelihood + weight * log_prior_ratio).mean()
      return -bound, {**metrics, "iwae": bound}
    kl_term = (losses.free_bits_kl(kl_per_dimension, options_.free_bits) if options_.free_bits
               else kl.mean())
    return -log_likelihood[0].mean() + weight * kl_term, metrics

  return loss


def make_train_step(models, optimizers, config):
  loss_fn = make_loss(models, config)

  def train_step(state: TrainState, batch, rng):
    """batch {"x" [B, H, W, C] in [-1, 1], "label" [B]} -> (state, per-example metrics in nats)."""
    vae = state.modules["vae"]
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(vae.params, batch, rng,
                                                                       state.step)
    return state.next(vae=vae.apply_gradients(optimizers["vae"], grads)), {"loss": loss, **metrics}

  return train_step


def make_generate(models, config):
  vae = models["vae"]

  def generate(state: TrainState, key, labels):
    """len(labels) decoded prior samples [num, H, W, C] (the likelihood's mean) in model
    space, of the classes `labels` for a conditional model (unconditional: only how many)."""
    z = jax.random.normal(key, (labels.shape[0], config.model.latent_dim))
    return _decode_mean(vae, config.model, {"params": state.modules["vae"].params}, z,
                        _labels(config, labels))

  return generate


def make_snapshots(models, config, num_interpolation_steps: int = 8):
  vae = models["vae"]
  generate = make_generate(models, config)
  classes = num_classes(config)

  def snapshots(state: TrainState, batch, key):
    """Prior samples (every class in turn for a conditional model), inputs beside their
    reconstructions, latent interpolations, and for 2-D latents "latent_scatter": the
    posterior means with their labels, [N, 3] rows (z1, z2, label)."""
    x, labels = batch["x"], batch["label"]
    conditioned = _labels(config, labels)
    params = {"params": state.modules["vae"].params}
    mean, _ = vae.apply(params, x, conditioned, method=vae.encode)
    decode = lambda z, y: _decode_mean(vae, config.model, params, z, y)
    half = x.shape[0] // 2
    # Each row walks in a straight line between the codes of two inputs (decoded as the first
    # input's class, for a conditional model: the path changes the style, not the class).
    rows = min(8, half)
    t = jnp.linspace(0.0, 1.0, num_interpolation_steps)[None, :, None]
    path = (1 - t) * mean[:rows, None] + t * mean[rows:2 * rows, None]
    path_labels = None if conditioned is None else jnp.repeat(conditioned[:rows],
                                                              num_interpolation_steps)
    outputs = {
        "samples": generate(state, key, jnp.arange(x.shape[0], dtype=jnp.int32) % max(classes, 1)),
        "reconstructions": alternate(x, decode(mean, conditioned)),
        "interpolations": decode(path.reshape(-1, mean.shape[-1]), path_labels),
    }
    if mean.shape[-1] == 2:
      outputs["latent_scatter"] = jnp.concatenate(
          [mean, labels[:, None].astype(mean.dtype)], axis=-1)
    return outputs

  return snapshots


def render_snapshots(outputs, batch) -> dict:
  """Grids, and "latent_scatter": 2-D posterior means coloured by their labels."""
  outputs = dict(outputs)
  pictures = {}
  if "latent_scatter" in outputs:
    values = np.asarray(outputs.pop("latent_scatter"))
    pictures["latent_scatter"] = writers.latent_scatter(values[:, :2],
                                                        values[:, 2].round().astype(np.int64))
  return {**render_examples(outputs, batch), **pictures}


def make_bounds(models, config, num_samples: int):
  """bounds(state, x [B, H, W, C], key, labels=None) -> (ELBO [B], importance-weighted bound
  [B]) in nats; a conditional model needs the labels [B] of x.

  The ELBO uses the analytic KL and one posterior sample; the IWAE bound uses
  `num_samples` samples z_k ~ q(z|x): log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x).
  """
  vae = models["vae"]

  def bounds(state: TrainState, x, key, labels=None):
    params = {"params": state.modules["vae"].params}
    labels = _labels(config, labels)
    mean, log_var = vae.apply(params, x, labels, method=vae.encode)

    def log_weight(sample_key):
      z = posterior_samples(mean, log_var, sample_key, 1)
      log_likelihood, log_prior_ratio = _log_weight_terms(vae, config.model, params, x, labels,
                                                          mean, log_var, z)
      return (log_likelihood + log_prior_ratio)[0], log_likelihood[0]

    keys = jax.random.split(key, num_samples)
    log_weights, log_likelihoods = jax.lax.map(log_weight, keys, batch_size=min(num_samples, 32))
    elbo = log_likelihoods[0] - losses.gaussian_kl(mean, log_var)
    return elbo, losses.importance_weighted_bound(log_weights)

  return bounds


def make_encode(models, config):
  """encode(state, x [B, H, W, C] in model space, labels=None) -> (mean, log_var), each
  [B, latent]: the posterior q(z|x); a conditional model needs the labels [B] of x."""
  vae = models["vae"]

  def encode(state: TrainState, x, labels=None):
    return vae.apply({"params": state.modules["vae"].params}, x, _labels(config, labels),
                     method=vae.encode)

  return encode


def make_decode(models, config):
  """decode(state, z [B, latent], labels=None) -> the likelihood's mean [B, H, W, C] in model
  space: what generate draws, at chosen codes (latent grids, interpolations)."""
  vae = models["vae"]

  def decode(state: TrainState, z, labels=None):
    return _decode_mean(vae, config.model, {"params": state.modules["vae"].params}, z,
                        _labels(config, labels))

  return decode


def make_reconstruct(models, config):
  """reconstruct(state, x, labels=None) -> the likelihood's mean at the posterior mean, in model
  space; a conditional model needs the labels [B] of x."""
  encode, decode = make_encode(models, config), make_decode(models, config)

  def reconstruct(state: TrainState, x, labels=None):
    mean, _ = encode(state, x, labels)
    return decode(state, mean, labels)

  return reconstruct


def make_functions(models, config):
  return {"generate": make_generate(models, config),
          "reconstruct": make_reconstruct(models, config)}


def _likelihood(context):
  """ELBO and IWAE bound on the evaluation split, with config.eval.iwae_samples samples."""
  config, split = context.experiment.config, context.split
  bounds = jax.jit(make_bounds(context.experiment.models, config, config.eval.iwae_samples))
  examples = split.read(np.arange(split.num_examples))
  # A conditional model's bounds are given each example's label: (x, labels) chunks.
  inputs = (examples["x"], examples["label"]) if num_classes(config) else (examples["x"],)
  dims = math.prod(split.shape)

  def likelihood(state):
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    elbo, iwae = map(np.concatenate, zip(*[
        jax.device_get(bounds(state, chunk[0], jax.random.fold_in(key, i), *chunk[1:]))
        for i, chunk in enumerate(zip(*[data.chunks(a, 128) for a in inputs]))]))
    nll = -float(iwae.mean())
    return {"elbo": float(elbo.mean()), "nll_iwae": nll, "bits_per_dim": nll / (dims * math.log(2))}

  return likelihood


eval_groups = {
    # ELBO and the IWAE bound of the evaluation split, nats and bits/dim.
    "likelihood": EvalGroup(_likelihood, higher_is_better=frozenset({"elbo"}), summary=lambda v: (
        f"test NLL {median_range(v['nll_iwae'], 2)} nats "
        f"({median_range(v['bits_per_dim'], 3)} bits/dim)" if "nll_iwae" in v else "")),
}
