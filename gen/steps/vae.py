"""The VAE train step: one gradient step on the negative ELBO (reparameterised, analytic KL)."""
import jax
import jax.numpy as jnp
import optax

from gen import UsageError, losses
from gen.steps import TrainState, init_variables


def _to_unit(x):
  """Model space [-1, 1] -> the likelihood's data space [0, 1]."""
  return (x + 1.0) * 0.5


def _log_likelihood(model_config, decoded, target):
  if model_config.likelihood == "bernoulli":
    return losses.bernoulli_log_likelihood(decoded, target)
  if model_config.likelihood == "gaussian":
    return losses.gaussian_log_likelihood(decoded, target, jnp.log(model_config.observation_std))
  raise UsageError(f"Unknown config.model.likelihood={model_config.likelihood!r}; "
                   "use 'bernoulli' or 'gaussian'.")


def _decode_mean(vae, model_config, params, z):
  """The likelihood's mean for codes z [B, latent], back in model space [-1, 1]."""
  decoded = vae.apply(params, z, method=vae.decode)
  mean = jax.nn.sigmoid(decoded) if model_config.likelihood == "bernoulli" else decoded
  return jnp.clip(mean, 0.0, 1.0) * 2.0 - 1.0


def init_state(models, optimizers, config, shape, key) -> TrainState:
  init_key, sample_key, rng = jax.random.split(key, 3)
  params, _ = init_variables(models["vae"], init_key, jnp.zeros((1, *shape)), sample_key)
  return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, params={"vae": params},
                    batch_stats={}, opt_state={"vae": optimizers["vae"].init(params)}, ema={})


def make_train_step(models, optimizers, config):
  vae = models["vae"]

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [B, H, W, C] in [-1, 1] -> (state, per-example metrics in nats)."""
    target = _to_unit(batch["x"])

    def loss_fn(params):
      decoded, mean, log_var = vae.apply({"params": params}, batch["x"], rng)
      log_likelihood = _log_likelihood(config.model, decoded, target)
      kl = losses.gaussian_kl(mean, log_var)
      elbo = (log_likelihood - kl).mean()
      return -elbo, {"elbo": elbo, "reconstruction": -log_likelihood.mean(), "kl": kl.mean()}

    params = state.params["vae"]
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizers["vae"].update(grads, state.opt_state["vae"], params)
    new_state = state.replace(step=state.step + 1,
                              params={"vae": optax.apply_updates(params, updates)},
                              opt_state={"vae": opt_state})
    return new_state, {"loss": loss, **metrics}

  return train_step


def make_generate(models, config):
  vae = models["vae"]

  def generate(state: TrainState, key, labels):
    """len(labels) decoded prior samples [num, H, W, C] (the likelihood's mean) in model
    space; the labels only set how many."""
    z = jax.random.normal(key, (labels.shape[0], config.model.latent_dim))
    return _decode_mean(vae, config.model, {"params": state.params["vae"]}, z)

  return generate


def make_snapshots(models, config, num_interpolation_steps: int = 8):
  vae = models["vae"]
  generate = make_generate(models, config)

  def snapshots(state: TrainState, batch, key):
    """Prior samples, inputs beside their reconstructions, and latent interpolations."""
    x = batch["x"]
    params = {"params": state.params["vae"]}
    mean, _ = vae.apply(params, x, method=vae.encode)
    decode = lambda z: _decode_mean(vae, config.model, params, z)
    # Rows alternate inputs and reconstructions of the posterior means.
    half = x.shape[0] // 2
    pairs = jnp.stack([x[:half], decode(mean)[:half]], axis=1).reshape(-1, *x.shape[1:])
    # Each row walks in a straight line between the codes of two inputs.
    rows = min(8, half)
    t = jnp.linspace(0.0, 1.0, num_interpolation_steps)[None, :, None]
    path = (1 - t) * mean[:rows, None] + t * mean[rows:2 * rows, None]
    interpolation = decode(path.reshape(-1, mean.shape[-1]))
    return {"samples": generate(state, key, jnp.zeros(x.shape[0], jnp.int32)), "reconstructions": pairs,
            "interpolations": interpolation}

  return snapshots


def make_bounds(models, config, num_samples: int):
  """bounds(state, x [B, H, W, C], key) -> (ELBO [B], importance-weighted bound [B]) in nats.

  The ELBO uses the analytic KL and one posterior sample; the IWAE bound uses
  `num_samples` samples z_k ~ q(z|x): log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x).
  """
  vae = models["vae"]

  def bounds(state: TrainState, x, key):
    params = {"params": state.params["vae"]}
    target = _to_unit(x)
    mean, log_var = vae.apply(params, x, method=vae.encode)

    def log_weight(sample_key):
      z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(sample_key, mean.shape)
      decoded = vae.apply(params, z, method=vae.decode)
      return (_log_likelihood(config.model, decoded, target) + losses.gaussian_log_density(z)
              - losses.gaussian_log_density(z, mean, log_var))

    keys = jax.random.split(key, num_samples)
    log_weights = jax.lax.map(log_weight, keys, batch_size=min(num_samples, 32))
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(keys[0], mean.shape)
    elbo = (_log_likelihood(config.model, vae.apply(params, z, method=vae.decode), target)
            - losses.gaussian_kl(mean, log_var))
    return elbo, losses.importance_weighted_bound(log_weights)

  return bounds


def make_reconstruct(models, config):
  """reconstruct(state, x) -> the likelihood's mean at the posterior mean, in model space."""
  vae = models["vae"]

  def reconstruct(state: TrainState, x):
    params = {"params": state.params["vae"]}
    mean, _ = vae.apply(params, x, method=vae.encode)
    return _decode_mean(vae, config.model, params, mean)

  return reconstruct
