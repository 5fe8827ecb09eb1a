"""The GAN family: each loss and regulariser against NumPy, and the step's options."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config, tiny
from gen import UsageError, cli, experiment as experiment_lib, losses, sharding
from gen.models import mlp_gan as mlp
from gen import families
from gen.families import gan, step_key


def _softplus(x):
  return np.logaddexp(0.0, x)


REAL = np.array([2.0, -1.0, 0.5, 3.5], np.float32)
FAKE = np.array([-3.0, 0.2, 1.1], np.float32)

# name: (D loss, G loss) written from the papers' formulas, in float64.
NUMPY_LOSSES = {
    "non_saturating": (lambda r, f: np.mean(_softplus(-r)) + np.mean(_softplus(f)),
                       lambda f: np.mean(_softplus(-f))),
    "minimax": (lambda r, f: np.mean(_softplus(-r)) + np.mean(_softplus(f)),
                lambda f: np.mean(np.log(1.0 - 1.0 / (1.0 + np.exp(-f))))),
    "hinge": (lambda r, f: np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)),
              lambda f: -np.mean(f)),
    "wasserstein": (lambda r, f: np.mean(f) - np.mean(r), lambda f: -np.mean(f)),
    "least_squares": (lambda r, f: 0.5 * np.mean((r - 1)**2) + 0.5 * np.mean(f**2),
                      lambda f: 0.5 * np.mean((f - 1)**2)),
}


@pytest.mark.parametrize("name", sorted(losses.GAN_LOSSES))
def test_gan_loss_matches_numpy(name):
  d_loss, g_loss = losses.GAN_LOSSES[name]
  expected_d, expected_g = NUMPY_LOSSES[name]
  real, fake = REAL.astype(np.float64), FAKE.astype(np.float64)
  np.testing.assert_allclose(d_loss(REAL, FAKE), expected_d(real, fake), rtol=1e-5)
  np.testing.assert_allclose(g_loss(FAKE), expected_g(fake), rtol=1e-5)


def test_one_sided_label_smoothing():
  p = 1 / (1 + np.exp(-REAL.astype(np.float64)))
  expected = np.mean(-0.9 * np.log(p) - 0.1 * np.log(1 - p)) + np.mean(_softplus(FAKE))
  np.testing.assert_allclose(losses.discriminator_loss(REAL, FAKE, real_label=0.9), expected,
                             rtol=1e-5)


def test_softmax_cross_entropy_matches_numpy():
  logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                             -log_probs[np.arange(5), labels].mean(), rtol=1e-5)


def test_gradient_penalty_against_finite_differences():
  # A leaky-ReLU MLP is piecewise linear: central differences are exact up to rounding
  # unless they cross a kink, which a small step makes unlikely.
  module = mlp.Discriminator(hidden=(8, 8))
  params = module.init(jax.random.key(0), jnp.zeros((1, 2)))
  d = lambda x: module.apply(params, x, train=False)[0]
  x = jax.random.normal(jax.random.key(1), (6, 2))
  grads = jax.grad(lambda x: d(x).sum())(x)
  h = 1e-3
  fd = np.stack([(np.asarray(d(x + h * e), np.float64) - np.asarray(d(x - h * e))) / (2 * h)
                 for e in np.eye(2, dtype=np.float32)], axis=-1)
  np.testing.assert_allclose(grads, fd, rtol=2e-3, atol=2e-4)
  expected = np.mean((np.linalg.norm(fd, axis=-1) - 1.0)**2)
  np.testing.assert_allclose(losses.gradient_penalty(grads), expected, rtol=2e-3)


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
  w = np.array([0.3, -2.0, 1.5], np.float32)
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  grads = jax.grad(lambda x: (x @ w).sum())(x)
  np.testing.assert_allclose(losses.r1_penalty(grads), np.sum(w**2), rtol=1e-6)


def test_spectral_norm_estimate_matches_svd():
  module = mlp.Discriminator(hidden=(16,), spectral_norm=True)
  x = jnp.ones((4, 5))
  variables = module.init(jax.random.key(0), x, train=False)
  apply = jax.jit(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"])[1])
  for _ in range(30):  # Power iteration, one step per call.
    variables = {**variables, **apply(variables)}
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  sigma = float(variables["batch_stats"]["SpectralNorm_0"]["Dense_0/kernel/sigma"])
  np.testing.assert_allclose(sigma, np.linalg.svd(kernel, compute_uv=False)[0], rtol=1e-3)
  # Evaluation leaves the estimate where it is.
  _, updates = module.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


def _close(a, b) -> bool:
  """Two trees of parameters equal to float32 rounding."""
  return all(np.allclose(x, y, rtol=1e-5, atol=1e-6)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run(config, steps: int, mesh):
  experiment = experiment_lib.build(config, mesh)
  state = experiment.init_state()
  step = experiment.compile_train_step(state)
  batch = experiment.read_batch(np.arange(experiment.step_batch_size))
  history = []
  for _ in range(steps):
    previous = jax.device_get(state)  # Before the step: it donates the state's buffers.
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    history.append((previous, jax.device_get(metrics)))
  return experiment, jax.device_get(state), history


def test_ema_follows_the_generator_with_ramped_decay(single_device_mesh):
  config = tiny(load_config("gan_ring2d"), batch_size=8, **{"gan.ema_decay": 0.999})
  _, state, history = _run(config, 3, single_device_mesh)
  ema = history[0][0].params["generator"]  # Starts at the initial weights.
  for step, (before, _) in enumerate(history):
    decay = min(0.999, (1 + step) / (10 + step))
    after = history[step + 1][0] if step + 1 < len(history) else state
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, after.params["generator"])
  generator = state.modules["generator"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               generator.ema, ema)
  # Sampling uses the average, not the current weights.
  assert generator.sampling_params is generator.ema


def test_n_critic_updates_the_discriminator_n_times_on_separate_batches(single_device_mesh):
  config = tiny(load_config("gan_ring2d"), batch_size=8, **{"gan.n_critic": 3})
  experiment, state, _ = _run(config, 2, single_device_mesh)
  assert experiment.step_batch_size == 24
  count = lambda name: int(optax.tree_utils.tree_get(state.modules[name].opt_state, "count"))
  assert count("discriminator") == 6 and count("generator") == 2

  # One step's discriminator is D updated three times in turn, on rows i, i+3, i+6, ... of the
  # batch (i = 0, 1, 2) against fakes of the step's noise, written out here.
  state = experiment.init_state()
  batch = experiment.read_batch(np.arange(24))
  stepped, _ = experiment.jit(experiment.family.make_train_step(
      experiment.models, experiment.optimizers, config))(state, batch, step_key(state))
  _, d_update, _ = gan.make_discriminator(experiment.models["discriminator"],
                                          experiment.optimizers["discriminator"], config)

  def discriminator_after(sub_batches):
    d, g = state.modules["discriminator"], state.modules["generator"]
    keys = jax.random.split(step_key(state), 4)
    for i, real in enumerate(sub_batches):
      z_key, _, d_key = jax.random.split(keys[i], 3)
      z = jax.random.normal(z_key, (8, config.model.latent_dim))
      fake = experiment.models["generator"].apply(g.variables(), z, None, train=True)
      d, _ = d_update(state.step, d, real, None, fake, None, d_key)
    return d.params

  expected = experiment.jit(discriminator_after)([batch["x"][i::3] for i in range(3)])
  once_thrice = experiment.jit(discriminator_after)([batch["x"][0::3]] * 3)
  assert _close(stepped.modules["discriminator"].params, expected)
  assert not _close(stepped.modules["discriminator"].params, once_thrice)


def test_lazy_r1_is_applied_every_k_steps_scaled_by_k(single_device_mesh):
  ring = lambda r1, every: tiny(load_config("gan_ring2d"), batch_size=8,
                                **{"gan.r1": r1, "gan.r1_every": every})
  _, _, history = _run(ring(10.0, 2), 4, single_device_mesh)
  penalties = [float(metrics["r1_penalty"]) for _, metrics in history]
  assert penalties[0] > 0 and penalties[2] > 0 and penalties[1] == 0 and penalties[3] == 0
  # Where it applies, γ weighs it k times (StyleGAN2's lazy regularisation): the first
  # update of γ 10 every 2nd step is that of γ 20 every step, not that of γ 10.
  discriminator = lambda state: state.params["discriminator"]
  lazy = discriminator(history[1][0])
  assert _close(lazy, discriminator(_run(ring(20.0, 1), 1, single_device_mesh)[1]))
  assert not _close(lazy, discriminator(_run(ring(10.0, 1), 1, single_device_mesh)[1]))


def test_linear_schedule_decays_to_zero_over_the_run():
  config = load_config("sngan_cifar10")
  optimizers = gan.make_optimizers(config, ["generator", "discriminator"])
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.ones(3)}
  for name, updates_total in [("generator", config.num_steps),
                              ("discriminator", config.num_steps * config.gan.n_critic)]:
    state = optimizers[name].init(params)
    first, _ = optimizers[name].update(grads, state, params)
    # Jump the optimizer's step counter to the end of the run.
    late = jax.tree.map(lambda s: jnp.asarray(updates_total, s.dtype) if s.dtype == jnp.int32
                        else s, state)
    last, _ = optimizers[name].update(grads, late, params)
    assert float(jnp.abs(first["w"]).max()) > 1e-5
    np.testing.assert_allclose(last["w"], 0.0, atol=1e-12)


@pytest.mark.parametrize("overrides, message", [
    ({"gan.loss": "wgan"}, "config.gan.loss='wgan' is unknown"),
    ({"gan.diffaugment": "color,flip"}, "unknown transforms \\['flip'\\]"),
    ({"gan.n_critic": 0}, "at least 1"),
    ({"gan.ema_decay": 1.0}, "ema_decay"),
    ({"model.num_classes": 5}, "digits has 10 classes"),
    ({"model.conditioning": "none"}, "conditional model needs both"),
])
def test_bad_gan_options_fail_before_compiling(overrides, message, single_device_mesh):
  config = tiny(load_config("cdcgan_digits"), **overrides)
  with pytest.raises(UsageError, match=message):
    experiment_lib.build(config, single_device_mesh)


def test_unknown_schedule_is_a_clear_error():
  config = tiny(load_config("sngan_cifar10"), **{"optimizer.schedule": "cosine"})
  with pytest.raises(UsageError, match="schedule='cosine'"):
    families.adam(config, ["generator"])


def test_options_reject_unknown_keys():
  with pytest.raises(KeyError, match="n_critics"):
    gan.options(n_critics=5)


def test_conditional_samples_follow_the_requested_labels(single_device_mesh):
  """Samples of class c from one z differ across c, and `sample_labels` cycles as asked."""
  config = tiny(load_config("cdcgan_digits"))
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  np.testing.assert_array_equal(experiment.sample_labels(5, [3, 7]), [3, 7, 3, 7, 3])
  np.testing.assert_array_equal(experiment.sample_labels(12), np.arange(12) % 10)
  with pytest.raises(UsageError, match=r"Labels must be in \[0, 10\)"):
    experiment.sample_labels(4, [10])
  generate = experiment.jit(experiment.functions["generate"])
  key = jax.random.key(0)
  a = generate(state, key, jnp.zeros(4, jnp.int32))
  b = generate(state, key, jnp.ones(4, jnp.int32))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
  # An unconditional model refuses labels.
  plain = experiment_lib.build(tiny(plain_dcgan_digits()), single_device_mesh)
  with pytest.raises(UsageError, match="unconditional"):
    plain.sample_labels(4, [1])


def plain_dcgan_digits():
  return cli.experiment_module("dcgan_digits").plain_config()


def test_temperature_scales_the_sampling_noise_only(single_device_mesh):
  """Samples at temperature T are the generator's (EMA, inference mode) images of T·z, for the
  z the key draws; training's noise stays N(0, I)."""
  config = tiny(plain_dcgan_digits(), **{"gan.temperature": 1.7})
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  key, labels = jax.random.key(4), jnp.zeros(6, jnp.int32)
  samples = experiment.jit(experiment.functions["generate"])(state, key, labels)
  g = state.modules["generator"]
  z = jax.random.normal(key, (6, config.model.latent_dim))
  expected = experiment.models["generator"].apply(g.variables(g.sampling_params), 1.7 * z,
                                                  None, train=False)
  np.testing.assert_allclose(samples, expected, atol=1e-5)
  assert np.abs(np.asarray(samples) - np.asarray(experiment.models["generator"].apply(
      g.variables(g.sampling_params), z, None, train=False))).max() > 1e-3
  # The train step is the same function at any temperature.
  cool = experiment_lib.build(tiny(plain_dcgan_digits()), single_device_mesh)
  batch = {"x": jnp.asarray(experiment.dataset.read(np.arange(16))["x"])}
  step = lambda e: e.jit(e.family.make_train_step(e.models, e.optimizers, e.config))
  stepped = [jax.tree.leaves(step(e)(state, batch, jax.random.key(1))[0].modules)
             for e in (experiment, cool)]
  for a, b in zip(*stepped):
    np.testing.assert_array_equal(a, b)


def test_vaegan_step_gradient_equals_the_gradient_of_its_objective(single_device_mesh):
  """The step pulls the encoder's and generator's gradients back through one shared forward
  pass with a VJP; with SGD(1) the update is exactly minus the gradient of the written-out
  objective L_adv + λ·L1 + β·KL against the updated discriminator."""
  from gen import losses as gen_losses
  from gen.families import vaegan
  config = tiny(load_config("vaegan_digits"), **{"vaegan.kl_weight": 0.5,
                                                 "vaegan.reconstruction_weight": 2.0})
  experiment = experiment_lib.build(config, single_device_mesh)
  sgd = {name: optax.sgd(1.0) for name in experiment.models}
  state = experiment.family.init_state(experiment.models, sgd, config, experiment.spec,
                                       jax.random.key(0))
  x = jnp.asarray(experiment.dataset.read(np.arange(8))["x"])
  rng = jax.random.key(3)
  new_state, _ = experiment.jit(vaegan.make_train_step(experiment.models, sgd, config))(
      state, {"x": x, "label": jnp.zeros(8, jnp.int32)}, rng)

  encoder, generator = experiment.models["encoder"], experiment.models["generator"]
  discriminate, _, g_loss = gan.make_discriminator(experiment.models["discriminator"],
                                                   sgd["discriminator"], config)
  eps_key, prior_key, _, g_key = jax.random.split(rng, 4)

  def objective(eg):
    mean, log_var = encoder.apply({"params": eg["encoder"]}, x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(eps_key, mean.shape)
    # Codes and prior draws interleaved (z0, prior0, z1, ...), as the step keeps each device's rows.
    codes = jnp.stack([z, jax.random.normal(prior_key, mean.shape)], axis=1).reshape(16, -1)
    decoded = jnp.tanh(generator.apply({"params": eg["generator"]}, codes))
    d = new_state.modules["discriminator"]
    logits, _, _ = discriminate(d.params, d.batch_stats, decoded, None, g_key)
    recon = decoded[0::2]
    return (g_loss(logits) + 2.0 * jnp.abs(x - recon).reshape(8, -1).sum(-1).mean()
            + 0.5 * gen_losses.gaussian_kl(mean, log_var).mean())

  eg = {name: state.params[name] for name in ("encoder", "generator")}
  expected = experiment.jit(jax.grad(objective))(eg)
  for name in eg:
    actual = jax.tree.map(lambda before, after: before - after, eg[name], new_state.params[name])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 actual, expected[name])
