"""InfoGAN: the information bound against NumPy, matched accuracy against brute force, Q's
gradient, and the family trained, sampled, snapshotted and evaluated through the loop."""
import itertools
import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import load_config, tiny
from gen import UsageError, experiment as experiment_lib, metrics, sharding, train
from gen.families import infogan


def _softplus(x):
  return np.logaddexp(0.0, x)


@pytest.mark.parametrize("std", [1.0, 0.5, 0.0])
def test_information_loss_matches_numpy(std):
  rng = np.random.default_rng(0)
  b, k, c = 6, 5, 3
  q = {"categorical": rng.normal(size=(b, k)), "mean": rng.normal(size=(b, c)),
       "log_std": rng.normal(size=(b, c)) * 3}
  categorical, continuous = rng.integers(0, k, b), rng.uniform(-1, 1, (b, c))
  ce, nll = jax.jit(infogan.information_loss, static_argnums=3)(
      {n: np.float32(v) for n, v in q.items()}, categorical, np.float32(continuous), std)
  logits = q["categorical"]
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(ce, -log_softmax[np.arange(b), categorical].mean(), rtol=1e-5)
  if std:
    log_std = np.full((b, c), np.log(std))
  else:  # soft_clamp to [-5, 2]: low + softplus(x - low), then high - softplus(high - x).
    low, high = infogan.LOG_STD_RANGE
    log_std = high - _softplus(high - (low + _softplus(q["log_std"] - low)))
  expected = (0.5 * np.log(2 * np.pi) + log_std
              + (continuous - q["mean"])**2 / (2 * np.exp(2 * log_std))).sum(-1).mean()
  np.testing.assert_allclose(nll, expected, rtol=1e-5)


def test_the_extension_weighs_the_bound_and_reports_it():
  config = load_config("infogan_digits", **{"infogan.weight": 0.5,
                                            "infogan.continuous_weight": 0.1})
  extension = infogan.make_extension(config)
  z, categorical, codes = jax.jit(extension.latents, static_argnums=2)(
      jax.random.key(0), jax.random.key(1), 64)
  assert z.shape == (64, config.model.latent_dim + 2) and categorical.shape == (64,)
  assert 0 <= categorical.min() and categorical.max() < 10 and np.abs(codes["continuous"]).max() <= 1
  rng = np.random.default_rng(1)
  q = {"categorical": rng.normal(size=(64, 10)), "mean": rng.normal(size=(64, 2)),
       "log_std": np.zeros((64, 2))}
  loss, reported = jax.jit(extension.auxiliary_loss)(q, codes)
  ce, nll = jax.jit(infogan.information_loss, static_argnums=3)(
      q, codes["categorical"], codes["continuous"], 1.0)
  np.testing.assert_allclose(loss, 0.5 * (ce + 0.1 * nll), rtol=1e-6)
  np.testing.assert_allclose(reported["info_categorical"], math.log(10) - ce, rtol=1e-6)
  np.testing.assert_allclose(reported["info_continuous"], 2 * math.log(2) - nll, rtol=1e-6)


def test_without_continuous_codes_only_the_categorical_bound_is_reported():
  extension = infogan.make_extension(load_config("dcgan_digits"))  # No continuous codes.
  _, _, codes = extension.latents(jax.random.key(0), jax.random.key(1), 8)
  q = {"categorical": np.zeros((8, 10)), "mean": np.zeros((8, 0)), "log_std": np.zeros((8, 0))}
  loss, reported = extension.auxiliary_loss(q, codes)
  assert set(reported) == {"info_categorical"}
  np.testing.assert_allclose(reported["info_categorical"], 0.0, atol=1e-6)  # Q uniform: CE = log K.
  np.testing.assert_allclose(loss, 0.2 * math.log(10), rtol=1e-6)


def _brute_force_accuracy(clusters, labels, num_clusters, num_classes):
  """The best accuracy over every one-to-one matching, tried one by one."""
  if num_clusters <= num_classes:
    matchings = [list(enumerate(p)) for p in itertools.permutations(range(num_classes),
                                                                    num_clusters)]
  else:
    matchings = [[(cluster, label) for label, cluster in enumerate(p)]
                 for p in itertools.permutations(range(num_clusters), num_classes)]
  return max(sum(np.sum((clusters == i) & (labels == j)) for i, j in matching)
             for matching in matchings) / len(clusters)


@pytest.mark.parametrize("num_clusters, num_classes", [(4, 4), (3, 5), (5, 3), (6, 6)])
def test_matched_accuracy_equals_brute_force(num_clusters, num_classes):
  rng = np.random.default_rng(10 * num_clusters + num_classes)
  labels = rng.integers(0, num_classes, 300)
  # Clusters that mostly follow a scrambled labelling, and otherwise are random.
  scramble = rng.integers(0, num_clusters, num_classes)
  clusters = np.where(rng.random(300) < 0.6, scramble[labels], rng.integers(0, num_clusters, 300))
  accuracy = metrics.matched_accuracy(clusters, labels, num_clusters, num_classes)
  assert accuracy == pytest.approx(_brute_force_accuracy(clusters, labels, num_clusters,
                                                         num_classes))
  # A relabelled perfect clustering scores 1.
  assert metrics.matched_accuracy((labels + 2) % num_classes, labels) == 1.0


@pytest.mark.parametrize("overrides, message", [
    ({"model.categorical_codes": 1}, r"config.model.categorical_codes=1 must be an integer of "
                                     r"at least 2"),
    ({"model.continuous_codes": -1}, r"config.model.continuous_codes=-1 must be"),
    ({"infogan.weight": -1.0}, r"config.infogan.weight=-1.0 must be in \[0.0, inf\]"),
])
def test_bad_code_values_fail_before_compiling(overrides, message, single_device_mesh):
  with pytest.raises(UsageError, match=message):
    experiment_lib.build(tiny(load_config("infogan_digits"), **overrides), single_device_mesh)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """tiny infogan_digits, trained 2 steps with a snapshot and a `codes` evaluation at step 2."""
  workdir = tmp_path_factory.mktemp("infogan")
  config = tiny(load_config("infogan_digits"), num_steps=2, sample_every=2, eval_every=2,
                **{"eval.num_samples": 64, "eval.metrics": ("codes",), "gan.ema_decay": 0.9})
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.train(config, str(workdir), mesh)
  experiment = experiment_lib.build(config, mesh)
  yield config, workdir, mesh, experiment, state


def test_q_gradient_reaches_the_generator_and_the_discriminator_trunk(trained):
  config, _, _, experiment, state = trained
  generator, discriminator = experiment.models["generator"], experiment.models["discriminator"]
  extension = infogan.make_extension(config)
  z, categorical, codes = jax.jit(extension.latents, static_argnums=2)(
      jax.random.key(0), jax.random.key(1), 8)
  g, d = state.modules["generator"], state.modules["discriminator"]

  def information(g_params, d_params):
    fake = generator.apply(g.variables(g_params), z, categorical, train=False)
    _, q = discriminator.apply(d.variables(d_params), fake, None, train=False)
    return extension.auxiliary_loss(q, codes)[0]

  g_grads, d_grads = experiment.jit(jax.grad(information, argnums=(0, 1)))(g.params, d.params)
  norm = lambda tree: float(sum(np.abs(x).sum() for x in jax.tree.leaves(tree)))
  assert all(norm(layer) > 0 for layer in g_grads.values()), {n: norm(l) for n, l in g_grads.items()}
  trunk = [name for name in d_grads if name.startswith("Conv")]
  assert len(trunk) == 2 and all(norm(d_grads[name]) > 0 for name in trunk)
  assert norm(d_grads["q_hidden"]) > 0 and norm(d_grads["q_out"]) > 0
  assert norm(d_grads["DiscriminatorHead_0"]) == 0  # D's own logit is not Q's.


def test_the_family_trains_and_evaluates_its_codes(trained):
  config, workdir, _, experiment, state = trained
  assert int(state.step) == 2
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  records = [r for r in records if "d_loss" in r]  # Not the evaluation's line.
  assert len(records) == 2 and all(np.isfinite(v) for r in records for v in r.values())
  assert {"d_info_categorical", "g_info_categorical", "g_info_continuous"} <= set(records[0])
  # Q is trained only by the information term, in D's update.
  initial = experiment.init_state().modules["discriminator"].params["q_out"]
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), initial,
                       state.modules["discriminator"].params["q_out"])
  assert max(jax.tree.leaves(moved)) > 0
  evaluated = json.loads((workdir / "eval" / "2.json").read_text())
  assert 0.1 <= evaluated["code_accuracy"] <= 1.0  # At least one code's share of 10.
  assert json.loads((workdir / "eval" / "best.json").read_text())["step"] == 2


def test_snapshots_vary_one_code_per_row(trained):
  _, workdir, _, _, _ = trained
  # K = 10 columns and rows of 8x8 digits drawn at 32 pixels, 1 pixel apart.
  for name in ("step_2", "continuous_1_step_2", "continuous_2_step_2"):
    assert Image.open(workdir / "samples" / f"{name}.png").size == (331, 331), name


def test_sample_labels_choose_the_categorical_code(trained, tmp_path):
  config, workdir, mesh, _, _ = trained
  samples = experiment_lib.sample(config, str(workdir), 20, str(tmp_path / "s.npz"), mesh,
                                  labels=["7", "2"])
  with np.load(tmp_path / "s.npz") as saved:
    assert saved["labels"].tolist() == [7, 2] * 10
    assert saved["samples"].shape == (20, 8, 8, 1) and saved["continuous"].shape == (20, 2)
    assert 0 <= saved["samples"].min() and saved["samples"].max() <= 1
    assert np.abs(saved["continuous"]).max() <= 1
  # The same noise and continuous codes with other categorical codes give other images.
  other = experiment_lib.sample(config, str(workdir), 20, None, mesh, labels=["3"])
  np.testing.assert_array_equal(other["continuous"], samples["continuous"])
  assert np.abs(other["samples"] - samples["samples"]).max() > 0
  with pytest.raises(UsageError, match=r"Labels must be in \[0, 10\)"):
    experiment_lib.sample(config, str(workdir), 4, None, mesh, labels=["10"])


def test_sampling_noise_has_the_temperatures_std():
  """Sampling and evaluation draw the noise at std gan.temperature; the continuous codes keep
  their prior U[-1, 1]."""
  noise, continuous = infogan.draw_codes(
      jax.random.key(0), 20_000, load_config("infogan_digits", **{"gan.temperature": 1.5}))
  assert abs(float(np.std(noise)) - 1.5) < 0.02
  assert 0.99 < float(np.abs(continuous).max()) <= 1.0
