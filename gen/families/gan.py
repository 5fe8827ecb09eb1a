"""The GAN family: `n_critic` discriminator updates, then one generator update, in one call.

The objective, its regularisers and the schedule come from `config.gan` (see `options`);
every option composes with every other and with class conditioning (`config.model.
num_classes`, with a projection or ACGAN discriminator).

A family built on this step (gen.families.infogan) passes an `Extension`: what the generator
is given besides its noise, and a loss on the discriminator's second output for the fakes,
added to the discriminator's and the generator's objectives; every option above composes
with it too.
"""
import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from gen import UsageError, augment, checks, losses, sharding
from gen.families import (ModuleState, TrainState, adam, init_variables, num_classes,
                          options_block)


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.gan`: the GAN objective and its regularisers, with the given values changed.

  Every key is present in every GAN config, so any of them can be set from the command
  line (`--config.gan.loss=hinge`).
  """
  return options_block("GAN", {
      "loss": "non_saturating",  # One of losses.GAN_LOSSES.
      "real_label": 1.0,  # Cross-entropy losses: 0.9 is one-sided label smoothing.
      "n_critic": 1,  # Discriminator updates per generator update, each on its own real batch.
      "gradient_penalty": 0.0,  # WGAN-GP's λ (10 in the paper), at random interpolates.
      "r1": 0.0,  # R1's γ: γ/2·E‖∇D(x)‖² at real examples.
      "r1_every": 1,  # Lazy R1 (StyleGAN2): every k steps, scaled by k.
      "diffaugment": "",  # DiffAugment policy for real and fake alike: "color,translation,cutout".
      "ema_decay": 0.0,  # Generator EMA used for sampling and evaluation; 0 turns it off.
      # The noise's std when sampling and evaluating (training draws N(0, I)): below 1 trades
      # recall for precision (Kingma & Dhariwal 2018's temperature), above 1 the reverse.
      "temperature": 1.0,
      "aux_weight": 1.0,  # ACGAN: weight of the auxiliary classification loss.
  }, overrides)


def validate(config):
  """Raises UsageError for GAN options that cannot work, before anything is compiled."""
  if "gan" not in config:
    raise UsageError("This model needs config.gan (see gen.families.gan.options).")
  gan = config.gan
  if gan.loss not in losses.GAN_LOSSES:
    raise UsageError(f"config.gan.loss={gan.loss!r} is unknown; "
                     f"known: {sorted(losses.GAN_LOSSES)}.")
  checks.at_least(gan.n_critic, "gan.n_critic", 1)
  checks.at_least(gan.r1_every, "gan.r1_every", 1)
  if not 0.0 <= gan.ema_decay < 1.0:
    raise UsageError(f"config.gan.ema_decay={gan.ema_decay} must be in [0, 1); 0 turns EMA off.")
  checks.in_range(gan.real_label, "gan.real_label", 0.0, 1.0, low_open=True)
  for key in ("gradient_penalty", "r1", "aux_weight"):
    checks.in_range(gan[key], f"gan.{key}", 0.0, float("inf"))
  checks.in_range(gan.temperature, "gan.temperature", 0.0, float("inf"), low_open=True)
  augment_policy(gan.diffaugment)


def batch_spec(config, dataset) -> dict:
  """Real examples "x" and, for a conditional model, their classes "label"."""
  spec = {"x": dataset.spec["x"]}
  if num_classes(config):
    spec["label"] = dataset.spec["label"]
  return spec


def examples_per_step(config) -> int:
  return config.gan.n_critic


def make_optimizers(config, names):
  """Adam per module; the discriminator's schedule counts its n_critic updates a step."""
  return adam(config, names, {"discriminator": config.gan.n_critic})


def throughput_unit(config):
  return ("images", 1)


def augment_policy(spec: str) -> tuple[str, ...]:
  """("color", ...) of a comma-separated DiffAugment policy; UsageError for unknown names."""
  policy = tuple(name.strip() for name in spec.split(",") if name.strip())
  unknown = set(policy) - set(augment.POLICIES)
  if unknown:
    raise UsageError(f"config.gan.diffaugment names unknown transforms {sorted(unknown)}; "
                     f"known: {augment.POLICIES}.")
  return policy


@dataclasses.dataclass(frozen=True)
class Extension:
  """How a family built on the GAN step changes it.

  latents(z_key, code_key, b) -> (z, labels or None, codes): the generator's inputs for b
    fakes (`generator(z, labels, train)`) and the codes they carry (any pytree with a leading
    batch axis). The discriminator is given the labels only for a conditional model.
  auxiliary_loss(outputs, codes) -> (loss, {metric: scalar}): a loss on the discriminator's
    second output (a pytree with a leading batch axis) for the fakes, given their codes;
    added to the discriminator's loss and to the generator's. None: no such loss.
  """
  latents: Callable
  auxiliary_loss: Callable | None = None


def conditional_latents(config) -> Extension:
  """The plain GAN's inputs: z ~ N(0, I) and, for a conditional model, uniform classes."""
  latent_dim, classes = config.model.latent_dim, num_classes(config)

  def latents(z_key, code_key, b):
    z = jax.random.normal(z_key, (b, latent_dim))
    labels = jax.random.randint(code_key, (b,), 0, classes) if classes else None
    return z, labels, labels

  return Extension(latents)


def init_state(models, optimizers, config, spec, key, extension: Extension | None = None
               ) -> TrainState:
  g_key, d_key, rng = jax.random.split(key, 3)
  extension = extension or conditional_latents(config)
  z, g_labels, _ = jax.tree.map(jnp.zeros_like, extension.latents(g_key, g_key, 1))
  labels = g_labels if num_classes(config) else None
  g_params, g_stats = init_variables(models["generator"], g_key, z, g_labels, train=False)
  d_params, d_stats = init_variables(models["discriminator"], d_key,
                                     jnp.zeros((1, *spec["x"].shape)), labels, train=False)
  return TrainState.create(rng, {
      "generator": ModuleState.create(g_params, optimizers["generator"], g_stats,
                                      ema=bool(config.gan.ema_decay)),
      # The discriminator's statistics are spectral norm's power-iteration vectors, if any:
      # no discriminator here uses BatchNorm, whose statistics would mix real and fake.
      "discriminator": ModuleState.create(d_params, optimizers["discriminator"], d_stats)})


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
  """The EMA's decay at `step`, ramped up as min(decay, (1 + step) / (10 + step)) so that the
  average does not remember the random initialisation for thousands of steps."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_discriminator(discriminator, optimizer, config, auxiliary_loss=None,
                       image_channels: tuple[int, ...] = ()):
  """(discriminate, d_update, g_loss_of_logits): the discriminator side of `config.gan`,
  shared by the GAN step, the VAE-GAN step and the pix2pix step.

  discriminate(d_params, d_stats, x, labels, key) -> (logits, class logits, new d_stats)
  d_update(step, d: ModuleState, real, real_labels, fake, fake_labels, key, fake_codes=None)
    -> (updated d, metrics): one step of `optimizer` on the loss, ACGAN term and penalties,
    and `auxiliary_loss(second output for the fakes, fake_codes)` (Extension) where given.
  image_channels: for a D whose examples are several images side by side on the channels
    (pix2pix's (input, output) pairs), their channel counts: DiffAugment moves, erases and
    recolours the images of one example alike, and mixes no channels of one with another's.
  """
  gan = config.gan
  acgan = config.model.get("conditioning", "none") == "acgan"
  d_loss_of_logits, g_loss_of_logits = losses.GAN_LOSSES[gan.loss]
  if gan.loss in ("non_saturating", "minimax"):
    d_loss_of_logits = functools.partial(d_loss_of_logits, real_label=gan.real_label)
  policy = augment_policy(gan.diffaugment)
  split_at = list(itertools.accumulate(image_channels))[:-1]

  def augment_examples(x, key):
    if len(image_channels) < 2:
      return augment.diff_augment(x, key, policy)
    # DiffAugment's random draws depend on the key and the batch's spatial shape only, so
    # one key gives every image of an example the same transform.
    return jnp.concatenate([augment.diff_augment(image, key, policy)
                            for image in jnp.split(x, split_at, axis=-1)], axis=-1)

  def discriminate(d_params, d_stats, x, labels, key):
    """(logits, class logits, updated spectral-norm state) of D on x (augmented first)."""
    augment_key, dropout_key = jax.random.split(key)
    x = augment_examples(x, augment_key)
    d_variables = {"params": d_params, **({"batch_stats": d_stats} if d_stats else {})}
    (logits, class_logits), updates = discriminator.apply(
        d_variables, x, labels, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return logits, class_logits, updates.get("batch_stats", d_stats)

  def input_gradients(d_params, d_stats, x, labels, key):
    """∇ₓ of D's logits, one row per example (examples are independent: D has no BatchNorm)."""
    logits = lambda x: discriminate(d_params, d_stats, x, labels, key)[0].sum()
    return jax.grad(logits)(x)

  def d_update(step, d: ModuleState, real, real_labels, fake, fake_labels, key, fake_codes=None):
    d_params, d_stats = d.params, d.batch_stats
    b = real.shape[0]
    d_key, gp_key, r1_key, eps_key = jax.random.split(key, 4)
    labels = None if real_labels is None else sharding.join_batches(real_labels, fake_labels)

    def loss_fn(d_params):
      logits, class_logits, new_stats = discriminate(
          d_params, d_stats, sharding.join_batches(real, fake), labels, d_key)
      real_logits, fake_logits = sharding.split_batches(logits, 2)
      loss = d_loss_of_logits(real_logits, fake_logits)
      aux = {"d_real_logit": real_logits.mean(), "d_fake_logit": fake_logits.mean()}
      if acgan:
        aux["d_class_loss"] = losses.softmax_cross_entropy(class_logits, labels)
        loss += gan.aux_weight * aux["d_class_loss"]
      if auxiliary_loss is not None:
        fake_outputs = jax.tree.map(lambda a: sharding.split_batches(a, 2)[1], class_logits)
        extra, extra_metrics = auxiliary_loss(fake_outputs, fake_codes)
        aux.update({f"d_{k}": v for k, v in extra_metrics.items()})
        loss += extra
      if gan.gradient_penalty:
        eps = jax.random.uniform(eps_key, (b,) + (1,) * (real.ndim - 1))
        between = eps * real + (1.0 - eps) * jax.lax.stop_gradient(fake)
        aux["gradient_penalty"] = losses.gradient_penalty(
            input_gradients(d_params, d_stats, between, real_labels, gp_key))
        loss += gan.gradient_penalty * aux["gradient_penalty"]
      if gan.r1:
        every = gan.r1_every
        r1 = lambda: losses.r1_penalty(
            input_gradients(d_params, d_stats, real, real_labels, r1_key))
        aux["r1_penalty"] = jax.lax.cond(step % every == 0, r1, lambda: jnp.zeros(()))
        loss += 0.5 * gan.r1 * every * aux["r1_penalty"]
      return loss, (new_stats, aux)

    (d_loss, (d_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    return d.apply_gradients(optimizer, grads, d_stats), {"d_loss": d_loss, **aux}

  return discriminate, d_update, g_loss_of_logits


def make_train_step(models, optimizers, config, extension: Extension | None = None):
  generator = models["generator"]
  gan, classes = config.gan, num_classes(config)
  acgan = config.model.get("conditioning", "none") == "acgan"
  extension = extension or conditional_latents(config)
  discriminate, d_update, g_loss_of_logits = make_discriminator(
      models["discriminator"], optimizers["discriminator"], config, extension.auxiliary_loss)

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [n_critic·B, ...] real examples in model space (batch["label"] [n_critic·B]
    their classes) -> (state, scalar metrics)."""
    n = gan.n_critic
    b = batch["x"].shape[0] // n
    # [B, n, ...] rather than [n, B, ...]: each device keeps its own rows of the batch.
    reals = batch["x"].reshape(b, n, *batch["x"].shape[1:])
    real_labels = batch["label"].reshape(b, n) if classes else None
    keys = jax.random.split(rng, n + 1)
    g = state.modules["generator"]
    g_params = g.params

    def generate(g_params, z, labels):
      fake, updates = generator.apply(g.variables(g_params), z, labels, train=True,
                                      mutable=["batch_stats"])
      return fake, updates.get("batch_stats", {})

    d = state.modules["discriminator"]
    for i in range(n):
      z_key, label_key, d_key = jax.random.split(keys[i], 3)
      z, g_labels, codes = extension.latents(z_key, label_key, b)
      fake_labels = g_labels if classes else None
      if i < n - 1:
        fake, _ = generate(jax.lax.stop_gradient(g_params), z, g_labels)
      else:
        # The last generator pass serves both updates: D trains on `fake`, and G's
        # gradient is pulled back through the same pass with its VJP.
        fake, generator_vjp, g_stats = jax.vjp(
            lambda p: generate(p, z, g_labels), g_params, has_aux=True)
      d, d_metrics = d_update(state.step, d, reals[:, i], None if real_labels is None else
                              real_labels[:, i], fake, fake_labels, d_key, codes)

    def g_loss_fn(fake):
      logits, class_logits, _ = discriminate(d.params, d.batch_stats, fake, fake_labels, keys[n])
      loss, metrics = g_loss_of_logits(logits), {}
      if acgan:
        loss += gan.aux_weight * losses.softmax_cross_entropy(class_logits, fake_labels)
      if extension.auxiliary_loss is not None:
        extra, extra_metrics = extension.auxiliary_loss(class_logits, codes)
        loss += extra
        metrics = {f"g_{k}": v for k, v in extra_metrics.items()}
      return loss, metrics

    (g_loss, g_metrics), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = generator_vjp(fake_grad)
    g = g.apply_gradients(optimizers["generator"], g_grads, g_stats)
    g = g.update_ema(ema_decay(gan.ema_decay, state.step))
    return state.next(generator=g, discriminator=d), {**d_metrics, "g_loss": g_loss, **g_metrics}

  return train_step


def sampling_noise(key, b: int, config) -> jax.Array:
  """The noise [b, latent_dim] samples and evaluations are drawn from: N(0, T²I) at
  T = config.gan.temperature (training draws N(0, I))."""
  return config.gan.temperature * jax.random.normal(key, (b, config.model.latent_dim))


def make_generate(models, config):
  generator = models["generator"]
  conditional = bool(num_classes(config))

  def generate(state: TrainState, key, labels):
    """Samples [len(labels), ...] of the given classes (ignored by unconditional models), from
    the generator's EMA weights where kept, in inference mode (BatchNorm running averages),
    with noise at `config.gan.temperature`."""
    g = state.modules["generator"]
    z = sampling_noise(key, labels.shape[0], config)
    return generator.apply(g.variables(g.sampling_params), z, labels if conditional else None,
                           train=False)

  return generate


def make_functions(models, config):
  return {"generate": make_generate(models, config)}
