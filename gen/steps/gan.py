"""The GAN train step: `n_critic` discriminator updates, then one generator update, in one call.

The objective, its regularisers and the schedule come from `config.gan` (see `options`);
every option composes with every other and with class conditioning (`config.model.
num_classes`, with a projection or ACGAN discriminator).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen import UsageError, augment, losses
from gen.steps import TrainState, init_variables, variables


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.gan`: the GAN objective and its regularisers, with the given values changed.

  Every key is present in every GAN config, so any of them can be set from the command
  line (`--config.gan.loss=hinge`).
  """
  gan = ml_collections.ConfigDict({
      "loss": "non_saturating",  # One of losses.GAN_LOSSES.
      "real_label": 1.0,  # Cross-entropy losses: 0.9 is one-sided label smoothing.
      "n_critic": 1,  # Discriminator updates per generator update, each on its own real batch.
      "gradient_penalty": 0.0,  # WGAN-GP's λ (10 in the paper), at random interpolates.
      "r1": 0.0,  # R1's γ: γ/2·E‖∇D(x)‖² at real examples.
      "r1_every": 1,  # Lazy R1 (StyleGAN2): every k steps, scaled by k.
      "diffaugment": "",  # DiffAugment policy for real and fake alike: "color,translation,cutout".
      "ema_decay": 0.0,  # Generator EMA used for sampling and evaluation; 0 turns it off.
      "aux_weight": 1.0,  # ACGAN: weight of the auxiliary classification loss.
  })
  unknown = set(overrides) - set(gan)
  if unknown:
    raise KeyError(f"Unknown GAN options {sorted(unknown)}; known: {sorted(gan)}.")
  gan.update(overrides)
  return gan


def validate(config):
  """Raises UsageError for GAN options that cannot work, before anything is compiled."""
  if "gan" not in config:
    raise UsageError("This model needs config.gan (see gen.steps.gan.options).")
  gan = config.gan
  if gan.loss not in losses.GAN_LOSSES:
    raise UsageError(f"config.gan.loss={gan.loss!r} is unknown; "
                     f"known: {sorted(losses.GAN_LOSSES)}.")
  if gan.n_critic < 1 or gan.r1_every < 1:
    raise UsageError("config.gan.n_critic and config.gan.r1_every must be at least 1.")
  if not 0.0 <= gan.ema_decay < 1.0:
    raise UsageError(f"config.gan.ema_decay={gan.ema_decay} must be in [0, 1); 0 turns EMA off.")
  augment_policy(gan.diffaugment)


def augment_policy(spec: str) -> tuple[str, ...]:
  """("color", ...) of a comma-separated DiffAugment policy; UsageError for unknown names."""
  policy = tuple(name.strip() for name in spec.split(",") if name.strip())
  unknown = set(policy) - set(augment.POLICIES)
  if unknown:
    raise UsageError(f"config.gan.diffaugment names unknown transforms {sorted(unknown)}; "
                     f"known: {augment.POLICIES}.")
  return policy


def num_classes(config) -> int:
  return config.model.get("num_classes", 0)


def init_state(models, optimizers, config, shape, key) -> TrainState:
  g_key, d_key, rng = jax.random.split(key, 3)
  labels = jnp.zeros((1,), jnp.int32) if num_classes(config) else None
  z = jnp.zeros((1, config.model.latent_dim))
  g_params, g_stats = init_variables(models["generator"], g_key, z, labels, train=False)
  d_params, d_stats = init_variables(models["discriminator"], d_key, jnp.zeros((1, *shape)),
                                     labels, train=False)
  params = {"generator": g_params, "discriminator": d_params}
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng, params=params,
      # The discriminator's are spectral norm's power-iteration vectors, if any: no
      # discriminator here uses BatchNorm, whose statistics would mix real and fake.
      batch_stats={"generator": g_stats, "discriminator": d_stats},
      opt_state={name: optimizers[name].init(p) for name, p in params.items()},
      ema={"generator": g_params} if config.gan.ema_decay else {})


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
  """The EMA's decay at `step`, ramped up as min(decay, (1 + step) / (10 + step)) so that the
  average does not remember the random initialisation for thousands of steps."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_discriminator(discriminator, optimizer, config):
  """(discriminate, d_update, g_loss_of_logits): the discriminator side of `config.gan`,
  shared by the GAN step and the VAE-GAN step.

  discriminate(d_params, d_stats, x, labels, key) -> (logits, class logits, new d_stats)
  d_update(step, (d_params, d_stats, d_opt_state), real, real_labels, fake, fake_labels, key)
    -> (updated triple, metrics): one step on the loss, ACGAN term and penalties.
  """
  gan = config.gan
  acgan = config.model.get("conditioning", "none") == "acgan"
  d_loss_of_logits, g_loss_of_logits = losses.GAN_LOSSES[gan.loss]
  if gan.loss in ("non_saturating", "minimax"):
    d_loss_of_logits = functools.partial(d_loss_of_logits, real_label=gan.real_label)
  policy = augment_policy(gan.diffaugment)

  def discriminate(d_params, d_stats, x, labels, key):
    """(logits, class logits, updated spectral-norm state) of D on x (augmented first)."""
    augment_key, dropout_key = jax.random.split(key)
    x = augment.diff_augment(x, augment_key, policy)
    d_variables = {"params": d_params, **({"batch_stats": d_stats} if d_stats else {})}
    (logits, class_logits), updates = discriminator.apply(
        d_variables, x, labels, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return logits, class_logits, updates.get("batch_stats", d_stats)

  def input_gradients(d_params, d_stats, x, labels, key):
    """∇ₓ of D's logits, one row per example (examples are independent: D has no BatchNorm)."""
    logits = lambda x: discriminate(d_params, d_stats, x, labels, key)[0].sum()
    return jax.grad(logits)(x)

  def d_update(step, d, real, real_labels, fake, fake_labels, key):
    d_params, d_stats, d_opt_state = d
    b = real.shape[0]
    d_key, gp_key, r1_key, eps_key = jax.random.split(key, 4)
    labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])

    def loss_fn(d_params):
      logits, class_logits, new_stats = discriminate(
          d_params, d_stats, jnp.concatenate([real, fake]), labels, d_key)
      real_logits, fake_logits = jnp.split(logits, 2)
      loss = d_loss_of_logits(real_logits, fake_logits)
      aux = {"d_real_logit": real_logits.mean(), "d_fake_logit": fake_logits.mean()}
      if acgan:
        aux["d_class_loss"] = losses.softmax_cross_entropy(class_logits, labels)
        loss += gan.aux_weight * aux["d_class_loss"]
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
    updates, d_opt_state = optimizer.update(grads, d_opt_state, d_params)
    return (optax.apply_updates(d_params, updates), d_stats, d_opt_state), {"d_loss": d_loss, **aux}

  return discriminate, d_update, g_loss_of_logits


def make_train_step(models, optimizers, config):
  generator = models["generator"]
  gan, latent_dim, classes = config.gan, config.model.latent_dim, num_classes(config)
  acgan = config.model.get("conditioning", "none") == "acgan"
  discriminate, d_update, g_loss_of_logits = make_discriminator(
      models["discriminator"], optimizers["discriminator"], config)

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [n_critic·B, ...] real examples in model space (batch["label"] [n_critic·B]
    their classes) -> (state, scalar metrics)."""
    n = gan.n_critic
    b = batch["x"].shape[0] // n
    # [B, n, ...] rather than [n, B, ...]: each device keeps its own rows of the batch.
    reals = batch["x"].reshape(b, n, *batch["x"].shape[1:])
    real_labels = batch["label"].reshape(b, n) if classes else None
    keys = jax.random.split(rng, n + 1)
    g_params = state.params["generator"]

    def generate(g_params, z, labels):
      fake, updates = generator.apply(variables(state, "generator", g_params), z, labels,
                                      train=True, mutable=["batch_stats"])
      return fake, updates.get("batch_stats", {})

    d = (state.params["discriminator"], state.batch_stats["discriminator"],
         state.opt_state["discriminator"])
    for i in range(n):
      z_key, label_key, d_key = jax.random.split(keys[i], 3)
      z = jax.random.normal(z_key, (b, latent_dim))
      fake_labels = jax.random.randint(label_key, (b,), 0, classes) if classes else None
      if i < n - 1:
        fake, _ = generate(jax.lax.stop_gradient(g_params), z, fake_labels)
      else:
        # The last generator pass serves both updates: D trains on `fake`, and G's
        # gradient is pulled back through the same pass with its VJP.
        fake, generator_vjp, g_stats = jax.vjp(
            lambda p: generate(p, z, fake_labels), g_params, has_aux=True)
      d, d_metrics = d_update(state.step, d, reals[:, i], None if real_labels is None else
                              real_labels[:, i], fake, fake_labels, d_key)
    d_params, d_stats, d_opt_state = d

    def g_loss_fn(fake):
      logits, class_logits, _ = discriminate(d_params, d_stats, fake, fake_labels, keys[n])
      loss = g_loss_of_logits(logits)
      if acgan:
        loss += gan.aux_weight * losses.softmax_cross_entropy(class_logits, fake_labels)
      return loss

    g_loss, fake_grad = jax.value_and_grad(g_loss_fn)(fake)
    (g_grads,) = generator_vjp(fake_grad)
    g_updates, g_opt_state = optimizers["generator"].update(
        g_grads, state.opt_state["generator"], g_params)
    g_params = optax.apply_updates(g_params, g_updates)
    ema = state.ema
    if gan.ema_decay:
      decay = ema_decay(gan.ema_decay, state.step)
      ema = {"generator": jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                                       ema["generator"], g_params)}

    new_state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "discriminator": d_params},
        batch_stats={"generator": g_stats, "discriminator": d_stats},
        opt_state={"generator": g_opt_state, "discriminator": d_opt_state},
        ema=ema)
    return new_state, {**d_metrics, "g_loss": g_loss}

  return train_step


def sampling_params(state: TrainState):
  """The generator's EMA weights when the run keeps them, else its current weights."""
  return state.ema.get("generator", state.params["generator"])


def make_generate(models, config):
  generator = models["generator"]
  conditional = bool(num_classes(config))

  def generate(state: TrainState, key, labels):
    """Samples [len(labels), ...] of the given classes (ignored by unconditional models), from
    the generator in inference mode (BatchNorm running averages)."""
    z = jax.random.normal(key, (labels.shape[0], config.model.latent_dim))
    return generator.apply(variables(state, "generator", sampling_params(state)), z,
                           labels if conditional else None, train=False)

  return generate


def make_snapshots(models, config):
  generate = make_generate(models, config)
  classes = max(num_classes(config), 1)

  def snapshots(state: TrainState, batch, key):
    """Samples from the same noise at every call, so grids show progress over training; for a
    conditional model, sample i has class i mod K."""
    return {"samples": generate(state, key, jnp.arange(batch["x"].shape[0]) % classes)}

  return snapshots
