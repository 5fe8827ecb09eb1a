"""The VAE family: objectives (β, KL warm-up, free bits, IWAE), the conditional VAE, the latent
scatter, and finite training at a high learning rate."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import special, stats

from conftest import load_config, tiny
from gen import evaluate, experiment as experiment_lib, sharding, train
from gen.families import vae as vae_steps


@functools.cache
def _experiment(name="vae_digits", **overrides):
  """A tiny experiment on one device, its initial state and a batch of 64 training digits."""
  config = tiny(load_config(name), **overrides)
  experiment = experiment_lib.build(config, sharding.make_mesh(jax.devices()[:1]))
  state = experiment.init_state()
  return experiment, state, experiment.dataset.read(np.arange(64))


@functools.cache
def _loss_fn(**options):
  """The compiled objective of tiny vae_digits with config.vae `options`."""
  config = tiny(load_config("vae_digits"), **{f"vae.{k}": v for k, v in options.items()})
  return _experiment()[0].jit(vae_steps.make_loss(_experiment()[0].models, config))


def _loss(experiment, state, batch, step=0, key=0, **options):
  """(loss, metrics) of the objective with config.vae `options`, at train step `step`."""
  loss, metrics = _loss_fn(**options)(state.params["vae"], batch, jax.random.key(key), step)
  return float(loss), {k: float(v) for k, v in metrics.items()}


@functools.cache
def _model_outputs(vae):
  """The compiled (mean, log_var, z, decoder output) for the loss's posterior sample z."""

  @jax.jit
  def outputs(params, x, key):
    mean, log_var = vae.apply(params, x, method=vae.encode)
    z = vae_steps.posterior_samples(mean, log_var, key, 1)[0]
    return mean, log_var, z, vae.apply(params, z, method=vae.decode)

  return outputs


def _manual_terms(experiment, state, batch, key=0):
  """NumPy/SciPy from the encoder's and decoder's outputs: per example log p(x|z), KL per
  latent dimension, and log p(z) - log q(z|x), for the loss's posterior sample z."""
  mean, log_var, z, logits = _model_outputs(experiment.models["vae"])(
      {"params": state.params["vae"]}, batch["x"], jax.random.key(key))
  logits = np.asarray(logits, np.float64)
  target = (np.asarray(batch["x"], np.float64) + 1) / 2
  log_likelihood = (target * special.log_expit(logits)
                    + (1 - target) * special.log_expit(-logits)).reshape(len(target), -1).sum(-1)
  mean, log_var, z = (np.asarray(a, np.float64) for a in (mean, log_var, z))
  kl = 0.5 * (np.exp(log_var) + mean**2 - 1 - log_var)
  log_ratio = (stats.norm.logpdf(z).sum(-1)
               - stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)).sum(-1))
  return log_likelihood, kl, log_ratio


def test_default_objective_is_the_elbo():
  experiment, state, batch = _experiment()
  loss, metrics = _loss(experiment, state, batch)
  log_likelihood, kl, _ = _manual_terms(experiment, state, batch)
  np.testing.assert_allclose(metrics["reconstruction"], -log_likelihood.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], kl.sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["elbo"], (log_likelihood - kl.sum(-1)).mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, -metrics["elbo"], rtol=1e-6)


@pytest.mark.parametrize("step, weight", [(0, 0.0), (25, 1.0), (50, 2.0), (100, 4.0), (10**6, 4.0)])
def test_beta_and_kl_warmup_weigh_the_kl(step, weight):
  experiment, state, batch = _experiment()
  loss, metrics = _loss(experiment, state, batch, step, beta=4.0, kl_warmup_steps=100)
  log_likelihood, kl, _ = _manual_terms(experiment, state, batch)
  assert metrics["kl_weight"] == pytest.approx(weight)
  np.testing.assert_allclose(loss, -log_likelihood.mean() + weight * kl.sum(-1).mean(), rtol=1e-5)
  # The logged ELBO stays the true one, whatever the weight.
  np.testing.assert_allclose(metrics["elbo"], (log_likelihood - kl.sum(-1)).mean(), rtol=1e-5)


def test_free_bits_clamp_each_dimensions_batch_mean():
  experiment, state, batch = _experiment()
  log_likelihood, kl, _ = _manual_terms(experiment, state, batch)
  per_dimension = kl.mean(0)
  free_bits = float(np.median(per_dimension))  # Some dimensions below λ, some above.
  assert (per_dimension < free_bits).any() and (per_dimension > free_bits).any()
  loss, metrics = _loss(experiment, state, batch, beta=2.0, free_bits=free_bits)
  expected = -log_likelihood.mean() + 2.0 * np.maximum(per_dimension, free_bits).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert loss > metrics["reconstruction"] + 2.0 * metrics["kl"]  # The clamp raised the KL term.


def test_iwae_objective_at_k1_is_the_elbos_sample_and_tightens_with_k():
  experiment, state, batch = _experiment()
  # K = 1: log p(x|z) + log p(z) - log q(z|x) at the ELBO's own posterior sample.
  loss, metrics = _loss(experiment, state, batch, objective="iwae", iwae_samples=1)
  log_likelihood, kl, log_ratio = _manual_terms(experiment, state, batch)
  np.testing.assert_allclose(-loss, (log_likelihood + log_ratio).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["iwae"], -loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["elbo"], (log_likelihood - kl.sum(-1)).mean(), rtol=1e-5)
  # Averaged over keys: K = 1 has the ELBO's expectation; more samples a higher bound.
  bounds = {k: np.mean([_loss(experiment, state, batch, key=key, objective="iwae",
                              iwae_samples=k)[1]["iwae"] for key in range(20)])
            for k in (1, 8, 64)}
  elbo = np.mean([_loss(experiment, state, batch, key=key)[1]["elbo"] for key in range(20)])
  np.testing.assert_allclose(bounds[1], elbo, rtol=5e-3)
  assert elbo < bounds[8] < bounds[64]


def test_conditional_generate_depends_on_the_label_and_snapshots_show_every_class():
  experiment, state, batch = _experiment("cvae_digits", **{"model.latent_dim": 2})
  generate = experiment.compile_generate()
  key = jax.random.key(1)
  in_turn = jnp.arange(64, dtype=jnp.int32) % 10
  samples = {label: np.asarray(generate(state, key, jnp.full(64, label, jnp.int32)))
             for label in (0, 1)}
  assert np.abs(samples[0] - samples[1]).max() > 1e-4
  np.testing.assert_array_equal(samples[0], generate(state, key, jnp.zeros(64, jnp.int32)))
  # Snapshots: prior samples of every class in turn, and the 2-D posterior means with labels.
  snapshots = experiment.jit(experiment.family.make_snapshots(experiment.models, experiment.config))
  outputs = snapshots(state, batch, key)
  np.testing.assert_allclose(outputs["samples"], generate(state, key, in_turn), atol=1e-6)
  vae = experiment.models["vae"]
  mean, _ = vae.apply({"params": state.params["vae"]}, batch["x"], batch["label"],
                      method=vae.encode)
  np.testing.assert_allclose(outputs["latent_scatter"][:, :2], mean, atol=1e-6)
  np.testing.assert_array_equal(outputs["latent_scatter"][:, 2], batch["label"])


def test_unconditional_generate_ignores_label_values_and_has_no_scatter_beyond_2d():
  experiment, state, batch = _experiment()  # latent_dim 4.
  generate = experiment.compile_generate()
  key = jax.random.key(1)
  np.testing.assert_array_equal(generate(state, key, jnp.zeros(64, jnp.int32)),
                                generate(state, key, jnp.ones(64, jnp.int32)))
  snapshots = experiment.jit(experiment.family.make_snapshots(experiment.models, experiment.config))
  assert set(snapshots(state, batch, key)) == {"samples", "reconstructions", "interpolations"}


def test_conditional_2d_run_writes_latent_scatter_samples_by_label_and_evaluates(tmp_path):
  config = tiny(load_config("cvae_digits"), **{
      "model.latent_dim": 2, "num_steps": 2, "sample_every": 1, "eval.iwae_samples": 4,
      "eval.metrics": ("likelihood", "reconstruction")})
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.train(config, str(tmp_path), mesh)
  for step in (1, 2):
    pixels = np.asarray(Image.open(tmp_path / "samples" / f"latent_scatter_step_{step}.png"))
    assert pixels.shape == (400, 400, 3)
    # Dots in several of the classes' colours: pixels far from grey.
    colours = {tuple(p) for p in pixels.reshape(-1, 3) if np.ptp(p.astype(int)) > 60}
    assert len(colours) >= 5
  # --mode=sample --labels=0,1,2: the labels repeated, samples that differ by label.
  output = tmp_path / "samples.npz"
  sampled = experiment_lib.sample(config, str(tmp_path), 7, str(output), mesh,
                                  labels=[0, 1, 2])["samples"]
  with np.load(output) as saved:
    np.testing.assert_array_equal(saved["labels"], [0, 1, 2, 0, 1, 2, 0])
  assert sampled.shape == (7, 8, 8, 1) and np.abs(sampled[0] - sampled[1]).max() > 1e-4
  # The evaluation split's labels reach the bounds and the reconstructions.
  results = evaluate.make_evaluator(experiment_lib.build(config, mesh))(state)
  assert all(np.isfinite(results[k]) for k in ("elbo", "nll_iwae", "bits_per_dim", "psnr", "ssim"))
  assert results["nll_iwae"] <= -results["elbo"] + 1.0


# The logistic run also ramps the KL weight up over its first 100 steps, from state.step.
@pytest.mark.parametrize("likelihood, warmup", [("gaussian", 0), ("logistic", 100)])
def test_no_nan_in_1000_steps_at_learning_rate_1e3(likelihood, warmup):
  config = tiny(load_config("vae_digits"), **{"model.likelihood": likelihood,
                                              "vae.kl_warmup_steps": warmup})
  assert config.optimizer.vae.learning_rate == 1e-3
  experiment = experiment_lib.build(config, sharding.make_mesh(jax.devices()[:1]))
  step = vae_steps.make_train_step(experiment.models, experiment.optimizers, config)
  data = experiment.dataset.read(np.arange(experiment.dataset.num_examples))
  rng = np.random.default_rng(0)
  indices = np.stack([rng.choice(len(data["x"]), config.batch_size, replace=False)
                      for _ in range(1000)])

  @jax.jit
  def run(state, indices):
    def body(state, idx):
      batch = {"x": jnp.asarray(data["x"])[idx], "label": jnp.asarray(data["label"])[idx]}
      return step(state, batch, jax.random.fold_in(state.rng, state.step))
    return jax.lax.scan(body, state, indices)

  state, metrics = jax.device_get(run(experiment.init_state(), indices))
  expected_weight = np.minimum(1.0, np.arange(1000) / warmup) if warmup else np.ones(1000)
  np.testing.assert_allclose(metrics["kl_weight"], expected_weight, rtol=1e-6)
  for name, values in metrics.items():
    assert np.all(np.isfinite(values)), (name, np.flatnonzero(~np.isfinite(values))[:5])
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
  # It learned: the ELBO of the last 100 steps is above that of the first 100.
  assert metrics["elbo"][-100:].mean() > metrics["elbo"][:100].mean()
