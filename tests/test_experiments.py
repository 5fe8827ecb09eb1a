"""Every file in experiments/ builds, initialises and trains two steps (tfds data mocked)."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import EXPERIMENTS, load_config, override
from gen import cli, train
from gen.cli import REQUIRED_KEYS

# Experiments whose batch is a reference's, for comparison with it: nanoGPT's quick start,
# the CycleGAN paper's batch of 1.
REFERENCE_BATCH = {"gpt_pydoc_tiny", "cyclegan_horse2zebra", "cyclegan_monet2photo"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_two_steps(name, tmp_path, single_device_mesh):
  # The experiment's own model (with its file's TEST_OVERRIDES, where its own takes minutes
  # a step on a CPU: it says why) at a small batch: what ships is what is tested.
  config = cli.load_config(name, test_overrides=True)
  assert all(key in config for key in REQUIRED_KEYS)
  assert config.batch_size % 8 == 0 or name in REFERENCE_BATCH, (
      "the default batch should split over 8 devices")
  override(config, {"num_steps": 2, "batch_size": 8, "log_every": 1})
  with tfds.testing.mock_data(num_examples=32):
    state = train.train(config, str(tmp_path), single_device_mesh)
  assert int(state.step) == 2
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == 2 and all(np.isfinite(v) for r in records for v in r.values())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_modules_optimizer_is_set_apart(name):
  """Two time-scale rates: overriding one module's learning rate leaves the others'."""
  config = load_config(name)
  modules = [key for key in config.optimizer if isinstance(config.optimizer[key], type(config))]
  for module in modules:
    before = {m: config.optimizer[m].learning_rate for m in modules}
    config.optimizer[module].learning_rate = 0.123
    assert {m: config.optimizer[m].learning_rate for m in modules} == {
        **before, module: 0.123}, module
