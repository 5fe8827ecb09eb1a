"""The InfoGAN family (Chen et al. 2016): the GAN step, with latent codes and their information.

The generator is given noise z ~ N(0, I) (`config.model.latent_dim`), a categorical code
c₁ ~ Cat(K) (`model.categorical_codes`, 10) and continuous codes c₂ ~ U[-1, 1]^C
(`model.continuous_codes`, 2). Q, a head on the discriminator's trunk, infers the codes from
an image, and both the generator and D with Q minimise λ times the negated variational lower
bound on the mutual information I(c; G(z, c)), up to the codes' entropies:

  L_I = CE(Q_cat(G(z, c)), c₁) + w · Σ_j −log N(c₂ⱼ | μⱼ(G(z, c)), σⱼ²),

with σ fixed (`config.infogan.continuous_std`, 1 as in the paper's MNIST run) or learned by Q
(`continuous_std` 0), λ `config.infogan.weight` (1) and w `continuous_weight` (1). The
lower bound itself is logged: `info_categorical` = log K − CE and `info_continuous` =
C·log 2 − NLL, in nats, for D's update (`d_`) and G's (`g_`). Everything else is the GAN
family's step (`config.gan`: losses, n_critic, penalties, EMA, DiffAugment, spectral norm),
through gen.families.gan.Extension.

Sampling and evaluation: "generate" draws every code from its prior; `--mode=sample
--labels=...` chooses the categorical code (the .npz's `labels`, beside the `continuous`
codes drawn); snapshots vary one code per row with the others fixed; the `codes` evaluation
group scores the categorical code as an unsupervised classifier of the generated images.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen import UsageError, checks, losses, metrics, sharding, writers
from gen.families import (EvalGroup, TrainState, median_range, num_classes, options_block,
                          percent, sample_labels)
from gen.families import gan as gan_family
from gen.families.gan import batch_spec, examples_per_step, make_optimizers  # noqa: F401
from gen.models import infogan as infogan_model

LOG_STD_RANGE = (-5.0, 2.0)  # A learned log-std is soft-clamped to this range.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.infogan`: the weight of the information term and the continuous codes' std."""
  return options_block("InfoGAN", {
      "weight": 1.0,  # λ: of L_I, in the generator's and D/Q's objectives.
      "continuous_weight": 1.0,  # The continuous codes' term relative to the categorical one.
      "continuous_std": 1.0,  # Q's Gaussian std for the continuous codes; 0: learned by Q.
  }, overrides)


def configure(config, latent_dim: int, categorical: int = 10, continuous: int = 2,
              q_hidden: int = 128) -> ml_collections.ConfigDict:
  """A DCGAN experiment's config made InfoGAN's: the model's noise and codes, config.infogan,
  and the `codes` evaluation beside the others (an experiment file's one call)."""
  with config.unlocked():
    config.model.update(dict(name="infogan", latent_dim=latent_dim, categorical_codes=categorical,
                             continuous_codes=continuous, q_hidden=q_hidden,
                             spectral_norm=config.model.get("spectral_norm", False)))
    config.infogan = options()
    config.eval.metrics = ("codes", *config.eval.metrics)
  return config


def validate(config):
  gan_family.validate(config)
  if "infogan" not in config:
    raise UsageError("This model needs config.infogan (see gen.families.infogan.options).")
  if num_classes(config):
    raise UsageError("InfoGAN is unconditional: set config.model.num_classes=0.")
  for key in ("weight", "continuous_weight", "continuous_std"):
    checks.in_range(config.infogan[key], f"infogan.{key}", 0.0, float("inf"))
  infogan_model.codes(config.model)


def code_sizes(config) -> tuple[int, int]:
  """(K categorical classes, C continuous codes)."""
  return infogan_model.codes(config.model)


def generator_input(noise, continuous):
  """What the generator's z is: the noise with the continuous codes after it (the categorical
  code goes in as the generator's labels, one-hot)."""
  return jnp.concatenate([noise, continuous.astype(noise.dtype)], axis=-1)


def draw_codes(key, b: int, config) -> tuple[jax.Array, jax.Array]:
  """(noise [b, latent_dim] ~ N(0, T²I) at T = config.gan.temperature, continuous codes
  [b, C] ~ U[-1, 1]): the codes sampling and evaluation draw."""
  noise_key, continuous_key = jax.random.split(key)
  _, c = code_sizes(config)
  return (gan_family.sampling_noise(noise_key, b, config),
          jax.random.uniform(continuous_key, (b, c), minval=-1.0, maxval=1.0))


def information_loss(q, categorical, continuous, continuous_std: float):
  """(categorical part, continuous part) of L_I: Q's outputs for a batch (see
  gen.models.infogan) against the codes the batch was made from.

  The categorical part is the mean cross-entropy −log Q(c₁|x); the continuous part the mean
  over the batch of −Σ_j log N(c₂ⱼ | μⱼ, σⱼ²), with σ = continuous_std, or exp of Q's
  soft-clamped log-std (LOG_STD_RANGE) where continuous_std is 0. The information lower
  bound is the codes' entropy (log K, and C·log 2 for U[-1, 1]^C) minus each.
  """
  ce = losses.softmax_cross_entropy(q["categorical"], categorical)
  if continuous_std:
    log_std = jnp.full_like(q["mean"], math.log(continuous_std))
  else:
    log_std = losses.soft_clamp(q["log_std"], *LOG_STD_RANGE)
  nll = -losses.gaussian_log_likelihood(q["mean"], continuous, log_std).mean()
  return ce, nll


def make_extension(config) -> gan_family.Extension:
  """The GAN step's Extension: the codes beside the noise, and λ·L_I on Q's outputs."""
  k, c = code_sizes(config)
  options_ = config.infogan

  def latents(z_key, code_key, b):
    categorical_key, key = jax.random.split(code_key)
    noise = jax.random.normal(z_key, (b, config.model.latent_dim))
    _, continuous = draw_codes(key, b, config)
    categorical = jax.random.randint(categorical_key, (b,), 0, k)
    return (generator_input(noise, continuous), categorical,
            {"categorical": categorical, "continuous": continuous})

  def auxiliary_loss(q, codes):
    ce, nll = information_loss(q, codes["categorical"], codes["continuous"],
                               options_.continuous_std)
    loss = options_.weight * (ce + options_.continuous_weight * nll)
    bounds = {"info_categorical": math.log(k) - ce}
    if c:  # Without continuous codes their bound is a constant 0, not a measurement.
      bounds["info_continuous"] = c * math.log(2.0) - nll
    return loss, bounds

  return gan_family.Extension(latents, auxiliary_loss)


def init_state(models, optimizers, config, spec, key) -> TrainState:
  return gan_family.init_state(models, optimizers, config, spec, key, make_extension(config))


def make_train_step(models, optimizers, config):
  return gan_family.make_train_step(models, optimizers, config, make_extension(config))


# --- Sampling ---

def make_decode(models, config):
  """decode(state, noise [B, latent], categorical [B] int, continuous [B, C]) -> images in
  model space, from the generator's EMA weights where kept, in inference mode."""
  generator = models["generator"]

  def decode(state: TrainState, noise, categorical, continuous):
    g = state.modules["generator"]
    return generator.apply(g.variables(g.sampling_params), generator_input(noise, continuous),
                           categorical, train=False)

  return decode


def make_generate_codes(models, config):
  """generate_codes(state, key, categorical [B] int) -> (images [B, ...], continuous [B, C]):
  samples of the given categorical codes, noise and continuous codes drawn from `key`."""
  decode = make_decode(models, config)

  def generate_codes(state: TrainState, key, categorical):
    noise, continuous = draw_codes(key, categorical.shape[0], config)
    return decode(state, noise, categorical, continuous), continuous

  return generate_codes


def make_functions(models, config):
  k, _ = code_sizes(config)
  generate_codes = make_generate_codes(models, config)

  def generate(state: TrainState, key, labels):
    """len(labels) samples with every code from its prior (the labels are not used: the model
    is unconditional), for the shared evaluation groups."""
    categorical_key, key = jax.random.split(key)
    return generate_codes(state, key, jax.random.randint(categorical_key, labels.shape, 0, k))[0]

  return {"generate": generate, "generate_codes": generate_codes}


def code_sampler(experiment):
  """sample(state, key, categorical [N] np.int) -> (images [N, ...] in model space, continuous
  codes [N, C]) on the host, in batches of the config's size over the mesh; batch i uses
  fold_in(key, i)."""
  generate = experiment.jit(experiment.functions["generate_codes"],
                            out_shardings=sharding.batch_sharding(experiment.mesh))
  sample = experiment.in_batches(generate)
  return lambda state, key, categorical: sample(state, key, np.asarray(categorical, np.int32))


sample_flags = {
    "labels": ("list", None, "--mode=sample, InfoGAN: the categorical codes to sample, in turn "
                             "(e.g. 0,1,2); default: every code in turn."),
}


def make_sampler(experiment, num_samples: int, labels=None):
  """{"samples" in [0, 1], "labels": the categorical codes, "continuous": the continuous codes
  drawn}; the codes are `labels` in turn, or every code in turn."""
  k, _ = code_sizes(experiment.config)
  categorical = sample_labels(k, num_samples, labels)  # Fails before a checkpoint is restored.
  sample = code_sampler(experiment)

  def sampler(state, key):
    images, continuous = sample(state, key, categorical)
    return {"samples": writers.to_unit_range(images.astype(np.float32)), "labels": categorical,
            "continuous": continuous.astype(np.float32)}

  return sampler


# --- Snapshots ---

def make_snapshots(models, config):
  k, c = code_sizes(config)
  decode = make_decode(models, config)

  def snapshots(state: TrainState, batch, key):
    """Grids of K columns. "samples": row r is one noise vector, its columns the categorical
    codes 0..K-1 (continuous codes 0). "continuous_<j>": one noise vector; row r has the
    categorical code r, its columns c₂ⱼ from -1 to 1 (the other continuous codes 0)."""
    noise, _ = draw_codes(key, k, config)
    rows = jnp.repeat(noise, k, axis=0)  # [K·K, latent]: row r repeated across the columns.
    columns = jnp.tile(jnp.arange(k, dtype=jnp.int32), k)
    outputs = {"samples": decode(state, rows, columns, jnp.zeros((k * k, c)))}
    fixed = jnp.repeat(noise[:1], k * k, axis=0)
    values = jnp.tile(jnp.linspace(-1.0, 1.0, k), k)
    row_codes = jnp.repeat(jnp.arange(k, dtype=jnp.int32), k)
    for j in range(c):
      continuous = jnp.zeros((k * k, c)).at[:, j].set(values)
      outputs[f"continuous_{j + 1}"] = decode(state, fixed, row_codes, continuous)
    return outputs

  return snapshots


def snapshot_renderer(config, dataset):
  k, _ = code_sizes(config)

  def render(outputs, batch) -> dict:
    return {name: writers.image_grid(np.asarray(values), columns=k)
            for name, values in outputs.items()}

  return render


# --- Evaluation ---

def _codes(context):
  """code_accuracy: the categorical code as a classifier of its samples, against gen's domain
  classifier's predictions, after the best one-to-one matching of codes to classes."""
  from gen import classifiers, evaluate  # gen.evaluate builds on the families, not they on it.
  experiment, split = context.experiment, context.split
  config = experiment.config
  k, _ = code_sizes(config)
  predict = classifiers.make_predict(classifiers.load_or_train(split.name), split.num_classes)
  sample = code_sampler(experiment)
  categorical = np.arange(config.eval.num_samples, dtype=np.int32) % k

  def codes(state):
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    images, _ = sample(state, key, categorical)
    predicted = evaluate.features(predict, images, 500, experiment.mesh)["probabilities"]
    return {"code_accuracy": metrics.matched_accuracy(categorical, predicted.argmax(-1), k,
                                                      split.num_classes)}

  return codes


eval_groups = {
    "codes": EvalGroup(_codes, ("generate_codes",), frozenset({"code_accuracy"}), lambda v: (
        f"categorical code accuracy after matching "
        f"{median_range(percent(v['code_accuracy']), 1, '%')}" if "code_accuracy" in v else "")),
}
