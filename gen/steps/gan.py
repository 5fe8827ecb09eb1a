"""The GAN train step: one discriminator update, then one generator update, in one call."""
import jax
import jax.numpy as jnp
import optax

from gen import losses
from gen.steps import TrainState, init_variables, variables


def init_state(models, optimizers, config, shape, key) -> TrainState:
  g_key, d_key, rng = jax.random.split(key, 3)
  z = jnp.zeros((1, config.model.latent_dim))
  x = jnp.zeros((1, *shape))
  g_params, g_stats = init_variables(models["generator"], g_key, z, train=False)
  d_params, d_stats = init_variables(models["discriminator"], d_key, x, train=False)
  if d_stats:
    raise ValueError("Discriminators with BatchNorm are not supported: their statistics would "
                     "mix real and fake batches.")
  params = {"generator": g_params, "discriminator": d_params}
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng, params=params,
      batch_stats={"generator": g_stats},
      opt_state={name: optimizers[name].init(p) for name, p in params.items()})


def make_train_step(models, optimizers, config):
  generator, discriminator = models["generator"], models["discriminator"]
  latent_dim = config.model.latent_dim

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [B, ...] real examples in model space -> (state, scalar metrics)."""
    real = batch["x"]
    noise_key, d_key, g_key = jax.random.split(rng, 3)
    z = jax.random.normal(noise_key, (real.shape[0], latent_dim), real.dtype)

    # One generator forward pass serves both updates: D trains on `fake`, and G's
    # gradient is pulled back through the same pass with its VJP.
    def generate(g_params):
      fake, updates = generator.apply(variables(state, "generator", g_params), z, train=True,
                                      mutable=["batch_stats"])
      return fake, updates.get("batch_stats", {})

    fake, generator_vjp, g_stats = jax.vjp(generate, state.params["generator"], has_aux=True)

    def d_loss_fn(d_params):
      # Real and fake in one batch: one pass of each layer instead of two.
      logits = discriminator.apply({"params": d_params}, jnp.concatenate([real, fake]),
                                   train=True, rngs={"dropout": d_key})
      real_logits, fake_logits = jnp.split(logits, 2)
      return losses.discriminator_loss(real_logits, fake_logits), (real_logits, fake_logits)

    d_params = state.params["discriminator"]
    (d_loss, (real_logits, fake_logits)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(d_params)
    d_updates, d_opt_state = optimizers["discriminator"].update(
        d_grads, state.opt_state["discriminator"], d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    def g_loss_fn(fake):
      logits = discriminator.apply({"params": d_params}, fake, train=True,
                                   rngs={"dropout": g_key})
      return losses.generator_loss(logits)

    g_loss, fake_grad = jax.value_and_grad(g_loss_fn)(fake)
    (g_grads,) = generator_vjp(fake_grad)
    g_params = state.params["generator"]
    g_updates, g_opt_state = optimizers["generator"].update(
        g_grads, state.opt_state["generator"], g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    new_state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "discriminator": d_params},
        batch_stats={"generator": g_stats},
        opt_state={"generator": g_opt_state, "discriminator": d_opt_state})
    metrics = {
        "d_loss": d_loss,
        "g_loss": g_loss,
        "d_real": jax.nn.sigmoid(real_logits).mean(),
        "d_fake": jax.nn.sigmoid(fake_logits).mean(),
    }
    return new_state, metrics

  return train_step


def make_generate(models, config):
  generator = models["generator"]

  def generate(state: TrainState, key, num: int):
    """num samples [num, ...] from the generator in inference mode (BatchNorm running averages)."""
    z = jax.random.normal(key, (num, config.model.latent_dim))
    return generator.apply(variables(state, "generator"), z, train=False)

  return generate


def make_snapshots(models, config):
  generate = make_generate(models, config)

  def snapshots(state: TrainState, batch, key):
    """Samples from the same noise at every call, so grids show progress over training."""
    return {"samples": generate(state, key, batch["x"].shape[0])}

  return snapshots
