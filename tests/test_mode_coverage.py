"""The VEEGAN/PacGAN mode-coverage protocol, and `gan_ring2d` at its default config covering the
ring as well as its runs recorded by `python -m gen.results` did."""
import json

import numpy as np
import pytest

from conftest import ROOT, load_config
from gen import data, metrics, train


def test_mode_coverage_on_constructed_samples():
  means = data.ring_means()
  std = 0.02
  # Two samples on mode 0, one within 3σ of mode 3, one 4σ off mode 5, one far from all.
  samples = np.array([means[0], means[0] + [2 * std, 0], means[3] + [0, 2.9 * std],
                      means[5] + [4 * std, 0], [0.0, 0.0]])
  result = metrics.mixture_mode_coverage(samples, means, std)
  assert result == {"modes": 2.0, "high_quality": 60.0}


def test_mode_coverage_of_the_data_itself():
  dataset = data.mixture("grid2d", "test")
  samples = dataset.read(np.arange(2500))["x"]
  result = metrics.mixture_mode_coverage(samples, data.grid_means(), 0.05)
  assert result["modes"] == 25
  # Within 3σ of an isotropic 2D Gaussian's mean: 1 - exp(-9/2) = 98.89% of its mass.
  np.testing.assert_allclose(result["high_quality"], 100 * (1 - np.exp(-4.5)), atol=0.8)


def _recorded(name: str, step: int) -> list[dict]:
  """The evaluations at `step` of `name`'s default runs in docs/results.json, one per seed."""
  collected = json.loads((ROOT / "docs" / "results.json").read_text())
  return [run["evals"][str(step)] for run in collected[name][""].values()]


@pytest.mark.optimized  # 5,000 steps.
def test_gan_ring2d_default_config_covers_the_ring_as_its_recorded_runs(tmp_path,
                                                                       single_device_mesh):
  """Half of gan_ring2d's default run (its evaluation at step 5,000): every mode its recorded
  runs captured, and a share of high-quality samples within 10 points of their lowest (the
  share swings from seed to seed of a GAN without EMA)."""
  recorded = _recorded("gan_ring2d", 5000)
  config = load_config("gan_ring2d")
  config.num_steps = 5000
  train.train(config, str(tmp_path), single_device_mesh)
  result = json.loads((tmp_path / "eval" / "5000.json").read_text())
  assert result["modes"] >= min(r["modes"] for r in recorded), (result, recorded)
  assert result["high_quality"] >= min(r["high_quality"] for r in recorded) - 10.0, (result,
                                                                                     recorded)
