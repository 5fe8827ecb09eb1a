"""Evaluation: the digits classifier, VAE bounds, --mode=eval and periodic evaluation in the loop."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, cli_env, load_config, tiny
from gen import classifiers, data, train
from gen.steps import vae as vae_steps


def test_digits_classifier_reaches_97_percent_on_the_test_split():
  params = classifiers.load_or_train("digits")
  assert classifiers.accuracy(params, data.digits("test")) >= 0.97


def test_iwae_bound_is_above_the_elbo_and_equals_it_in_expectation_at_k1(single_device_mesh):
  config = tiny(load_config("vae_digits"))
  experiment = train.build(config, single_device_mesh)
  state = experiment.init_state()
  x = experiment.dataset.read(np.arange(64))["x"]
  key = jax.random.key(0)
  elbo, iwae_50 = jax.jit(vae_steps.make_bounds(experiment.models, config, 50))(state, x, key)
  assert float(iwae_50.mean()) > float(elbo.mean())
  # With one sample the bound is log p(x|z) + log p(z) - log q(z|x), whose expectation is the
  # ELBO (the analytic-KL estimate has the same mean): average over many keys.
  bounds_1 = jax.jit(vae_steps.make_bounds(experiment.models, config, 1))
  runs = [jax.device_get(bounds_1(state, x, jax.random.key(i))) for i in range(200)]
  elbo_mean = np.mean([e.mean() for e, _ in runs])
  iwae_mean = np.mean([i.mean() for _, i in runs])
  np.testing.assert_allclose(iwae_mean, elbo_mean, rtol=2e-3)


def _cli(args, workdir):
  return subprocess.run([sys.executable, "-m", "gen.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name, overrides, expected", [
    ("gan_ring2d", ["--config.model.hidden=(16,16)"], {"modes", "high_quality", "mode_kl"}),
    ("vae_digits", ["--config.model.features=(8,16)", "--config.eval.num_samples=500",
                    "--config.eval.iwae_samples=8"],
     {"elbo", "nll_iwae", "bits_per_dim", "psnr", "ssim", "fd", "kid", "precision", "recall",
      "density", "coverage", "classifier_score"}),
])
def test_eval_mode_and_periodic_evaluation(name, overrides, expected, tmp_path):
  args = [f"--config=experiments/{name}.py", "--config.num_steps=4", "--config.batch_size=16",
          "--config.eval_every=2", "--config.log_every=2", *overrides]
  result = _cli(args, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  # Periodic evaluation at steps 2 and 4, logged, and the best checkpoint kept.
  for step in (2, 4):
    record = json.loads((tmp_path / "eval" / f"{step}.json").read_text())
    assert expected <= set(record) and all(math.isfinite(record[k]) for k in expected)
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any(f"eval/{sorted(expected)[0]}" in r for r in logged)
  best = json.loads((tmp_path / "eval" / "best.json").read_text())
  assert best["step"] in (2, 4) and os.listdir(tmp_path / "checkpoints_best") == [str(best["step"])]

  os.remove(tmp_path / "eval" / "4.json")
  result = _cli([*args, "--mode=eval"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / "eval" / "4.json").read_text())
  assert expected <= set(record)
  assert record["step"] == 4


def test_inception_metrics_without_weights_name_the_download(tmp_path, monkeypatch,
                                                               single_device_mesh):
  from gen import UsageError, evaluate, inception
  monkeypatch.setattr(inception, "default_weights_path", lambda: tmp_path / "missing.pth")
  config = tiny(load_config("dcgan_digits"), **{"eval.metrics": ("inception",)})
  experiment = train.build(config, single_device_mesh)
  with pytest.raises(UsageError, match=r"(?s)pt_inception-2015-12-05.*curl -L -o"):
    evaluate.make_evaluator(experiment, str(tmp_path))


def test_evaluation_on_8_devices_matches_1_device(tmp_path):
  from gen import evaluate, sharding
  config = tiny(load_config("dcgan_digits"), batch_size=16, **{"eval.num_samples": 240})
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    experiment = train.build(config, sharding.make_mesh(devices))
    state = experiment.init_state()
    results.append(evaluate.make_evaluator(experiment, str(tmp_path / str(len(devices))))(state))
  one, eight = results
  for key in ("fd", "kid", "classifier_score", "precision", "recall", "density", "coverage"):
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-3, atol=1e-3, err_msg=key)
