"""The VAE-GAN family (Larsen et al. 2016; the seed design's hybrid objective).

An encoder E and a generator G (a VAE decoder, images through tanh) minimise

  L_adv(D(G(z))) + λ·‖x − G(E(x))‖₁ + β·KL(q(z|x) ‖ N(0, I)),

with z both the reparameterised code of x (reconstructions) and a prior sample; the
discriminator is the GAN family's (`config.gan`: loss, penalties, spectral norm,
DiffAugment), trained on real images against reconstructions and prior samples. The L1
term is summed over pixels (model space [-1, 1]) and the KL over latents, each averaged
over the batch. Weights: `config.vaegan.reconstruction_weight` (λ), `kl_weight` (β),
`adversarial_weight`.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gen import UsageError, checks, losses, sharding
from gen.families import ModuleState, TrainState, alternate, init_variables, num_classes
from gen.families import gan as gan_family


def validate(config):
  gan_family.validate(config)
  if config.gan.n_critic != 1 or config.gan.ema_decay:
    raise UsageError("VAE-GAN trains D once per step and keeps no EMA: set "
                     "config.gan.n_critic=1 and config.gan.ema_decay=0.")
  if num_classes(config):
    raise UsageError(f"config.model.num_classes={num_classes(config)}: VAE-GAN is "
                     "unconditional here; set --config.model.num_classes=0 (and "
                     "conditioning 'none'), or use cdcgan_digits or cvae_digits for a "
                     "class-conditional model.")
  for key in ("reconstruction_weight", "kl_weight", "adversarial_weight"):
    checks.in_range(config.vaegan[key], f"vaegan.{key}", 0.0, float("inf"))


def batch_spec(config, dataset) -> dict:
  return {"x": dataset.spec["x"]}


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.vaegan`: the weights of the hybrid objective."""
  weights = ml_collections.ConfigDict(
      {"reconstruction_weight": 1.0, "kl_weight": 1.0, "adversarial_weight": 1.0})
  weights.update(overrides)
  return weights


def init_state(models, optimizers, config, spec, key) -> TrainState:
  e_key, g_key, d_key, rng = jax.random.split(key, 4)
  x = jnp.zeros((1, *spec["x"].shape))
  e_params, _ = init_variables(models["encoder"], e_key, x)
  g_params, _ = init_variables(models["generator"], g_key, jnp.zeros((1, config.model.latent_dim)))
  d_params, d_stats = init_variables(models["discriminator"], d_key, x, None, train=False)
  return TrainState.create(rng, {
      "encoder": ModuleState.create(e_params, optimizers["encoder"]),
      "generator": ModuleState.create(g_params, optimizers["generator"]),
      "discriminator": ModuleState.create(d_params, optimizers["discriminator"], d_stats)})


def _decode(generator, params, z):
  return jnp.tanh(generator.apply({"params": params}, z))


def make_train_step(models, optimizers, config):
  encoder, generator = models["encoder"], models["generator"]
  weights = config.vaegan
  discriminate, d_update, g_loss_of_logits = gan_family.make_discriminator(
      models["discriminator"], optimizers["discriminator"], config)

  def train_step(state: TrainState, batch, rng):
    """batch["x"] [B, H, W, C] in [-1, 1] -> (state, scalar metrics)."""
    x = batch["x"]
    b = x.shape[0]
    eps_key, prior_key, d_key, g_key = jax.random.split(rng, 4)

    # One encoder and generator pass serves both updates: D trains on its outputs, and
    # the encoder's and generator's gradients are pulled back through it with its VJP.
    def forward(eg_params):
      mean, log_var = encoder.apply({"params": eg_params["encoder"]}, x)
      z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(eps_key, mean.shape)
      z_prior = jax.random.normal(prior_key, mean.shape)
      recon, samples = sharding.split_batches(_decode(
          generator, eg_params["generator"], sharding.join_batches(z, z_prior)), 2)
      return recon, samples, losses.gaussian_kl(mean, log_var).mean()

    eg_params = {"encoder": state.params["encoder"], "generator": state.params["generator"]}
    (recon, samples, kl), eg_vjp = jax.vjp(forward, eg_params)

    # D sees reconstructions for half the batch and prior samples for the other half.
    # (Selected by row rather than sliced and appended, so each device keeps its rows.)
    first_half = (jnp.arange(b) < b // 2).reshape(b, *[1] * (x.ndim - 1))
    fake = jnp.where(first_half, recon, samples)
    d, d_metrics = d_update(state.step, state.modules["discriminator"], x, None,
                            jax.lax.stop_gradient(fake), None, d_key)

    def eg_loss(recon, samples):
      logits, _, _ = discriminate(d.params, d.batch_stats, sharding.join_batches(recon, samples),
                                  None, g_key)
      adversarial = g_loss_of_logits(logits)
      l1 = jnp.abs(x - recon).reshape(b, -1).sum(-1).mean()
      loss = (weights.adversarial_weight * adversarial + weights.reconstruction_weight * l1)
      return loss, (adversarial, l1)

    (_, (adversarial, l1)), (recon_grad, samples_grad) = jax.value_and_grad(
        eg_loss, argnums=(0, 1), has_aux=True)(recon, samples)
    (eg_grads,) = eg_vjp((recon_grad, samples_grad, jnp.asarray(weights.kl_weight, kl.dtype)))
    new_state = state.next(
        encoder=state.modules["encoder"].apply_gradients(optimizers["encoder"],
                                                         eg_grads["encoder"]),
        generator=state.modules["generator"].apply_gradients(optimizers["generator"],
                                                             eg_grads["generator"]),
        discriminator=d)
    return new_state, {**d_metrics, "g_adversarial": adversarial, "reconstruction_l1": l1,
                       "kl": kl}

  return train_step


def make_generate(models, config):
  generator = models["generator"]

  def generate(state: TrainState, key, labels):
    """len(labels) images [num, H, W, C] in [-1, 1] from prior codes at `config.gan.
    temperature` (labels set how many)."""
    z = gan_family.sampling_noise(key, labels.shape[0], config)
    return _decode(generator, state.params["generator"], z)

  return generate


def make_reconstruct(models, config):
  """reconstruct(state, x) -> G(mean of q(z|x)) in model space."""
  encoder, generator = models["encoder"], models["generator"]

  def reconstruct(state: TrainState, x, labels=None):
    mean, _ = encoder.apply({"params": state.params["encoder"]}, x)
    return _decode(generator, state.params["generator"], mean)

  return reconstruct


def make_snapshots(models, config):
  generate, reconstruct = make_generate(models, config), make_reconstruct(models, config)

  def snapshots(state: TrainState, batch, key):
    """Prior samples, and inputs beside their reconstructions."""
    x = batch["x"]
    return {"samples": generate(state, key, jnp.zeros(x.shape[0], jnp.int32)),
            "reconstructions": alternate(x, reconstruct(state, x))}

  return snapshots


def make_functions(models, config):
  return {"generate": make_generate(models, config),
          "reconstruct": make_reconstruct(models, config)}
