"""Evaluation: the digits classifier, VAE bounds, the Inception group's missing weights, and
sharded evaluation (--mode=eval and periodic evaluation run in tests/test_cli.py)."""
import jax
import numpy as np
import pytest

from conftest import load_config, tiny
from gen import classifiers, data, experiment as experiment_lib
from gen.families import vae as vae_steps


def test_digits_classifier_reaches_97_percent_on_the_test_split():
  params = classifiers.load_or_train("digits")
  assert classifiers.accuracy(params, data.digits("test")) >= 0.97


def test_iwae_bound_is_above_the_elbo_and_equals_it_in_expectation_at_k1(single_device_mesh):
  config = tiny(load_config("vae_digits"))
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  x = experiment.dataset.read(np.arange(64))["x"]
  key = jax.random.key(0)
  elbo, iwae_50 = experiment.jit(vae_steps.make_bounds(experiment.models, config, 50))(state, x, key)
  assert float(iwae_50.mean()) > float(elbo.mean())
  # With one sample the bound is log p(x|z) + log p(z) - log q(z|x), whose expectation is the
  # ELBO (the analytic-KL estimate has the same mean): average over many keys.
  bounds_1 = experiment.jit(vae_steps.make_bounds(experiment.models, config, 1))
  runs = [jax.device_get(bounds_1(state, x, jax.random.key(i))) for i in range(200)]
  elbo_mean = np.mean([e.mean() for e, _ in runs])
  iwae_mean = np.mean([i.mean() for _, i in runs])
  np.testing.assert_allclose(iwae_mean, elbo_mean, rtol=2e-3)


def test_inception_metrics_without_weights_fail_before_the_first_step(tmp_path, monkeypatch,
                                                                       single_device_mesh):
  from gen import UsageError, inception, train
  monkeypatch.setattr(inception, "default_weights_path", lambda: tmp_path / "missing.pth")
  config = tiny(load_config("dcgan_digits"), num_steps=10_000, eval_every=5_000,
                **{"eval.metrics": ("inception",)})
  workdir = tmp_path / "run"
  with pytest.raises(UsageError, match=r"(?s)pt_inception-2015-12-05.*curl -L -o"):
    train.train(config, str(workdir), single_device_mesh)
  # Not one step was trained, logged or saved.
  assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints").exists()


def test_evaluation_on_8_devices_matches_1_device(tmp_path):
  from gen import evaluate, sharding
  config = tiny(load_config("dcgan_digits"), batch_size=16, **{"eval.num_samples": 240})
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    experiment = experiment_lib.build(config, sharding.make_mesh(devices))
    state = experiment.init_state()
    results.append(evaluate.make_evaluator(experiment, str(tmp_path / str(len(devices))))(state))
  one, eight = results
  for key in ("fd", "kid", "classifier_score", "precision", "recall", "density", "coverage"):
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-3, atol=1e-3, err_msg=key)


def test_matched_precision_recall_scores_samples_at_the_floors_size():
  """Fakes that are the floor's own samples five times over, shuffled: at the floor's size each
  subset is those samples again, so the matched scores are the floor's exactly; over all of
  them every fake has duplicates within its k = 3 nearest, its ball shrinks to a point, and
  recall collapses. Too few fakes for one subset: no matched scores."""
  from gen import evaluate, metrics
  rng = np.random.default_rng(0)
  reference = {"features": rng.normal(size=(120, 6))}
  samples = rng.normal(size=(200, 6)) + 0.3
  fake = {"features": np.concatenate([samples[rng.permutation(200)] for _ in range(5)])}
  floor = metrics.precision_recall(reference["features"], samples)
  matched = evaluate.matched_precision_recall(reference, fake, 200)
  assert matched == pytest.approx({"matched_precision": floor["precision"],
                                   "matched_recall": floor["recall"]}, rel=1e-12)
  assert 0.3 < floor["recall"] < 1.0
  assert metrics.precision_recall(reference["features"], fake["features"])["recall"] < 0.1
  assert evaluate.matched_precision_recall(reference, {"features": samples[:150]}, 200) == {}
