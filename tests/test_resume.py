"""Stopping and resuming gives the same run as never stopping."""
import json

import jax
import numpy as np
import pytest

from conftest import load_config, tiny
from gen import train


# dcgan_digits's linear decay is as long as num_steps, which this test raises between the
# two calls; a resume within one decaying run is test_faults's kill -9 test.
@pytest.mark.parametrize("name, overrides", [
    ("dcgan_digits", {"optimizer.schedule": "constant"}), ("vae_digits", {}), ("gpt_pydoc", {})])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(name, overrides, tmp_path,
                                                        single_device_mesh):
  config = lambda steps: tiny(load_config(name), num_steps=steps, log_every=10, **overrides)
  train.train(config(30), str(tmp_path / "resumed"), single_device_mesh)
  resumed = train.train(config(60), str(tmp_path / "resumed"), single_device_mesh)
  straight = train.train(config(60), str(tmp_path / "straight"), single_device_mesh)

  assert int(resumed.step) == int(straight.step) == 60
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed)), jax.tree.leaves(jax.device_get(straight))):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)
  # The log continues where it stopped: every logged step once, in order.
  steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert steps == list(range(10, 61, 10))
  assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["30", "60"]


def test_a_finished_run_is_not_trained_again(tmp_path, single_device_mesh):
  config = tiny(load_config("gan_ring2d"), num_steps=5)
  first = train.train(config, str(tmp_path), single_device_mesh)
  again = train.train(config, str(tmp_path), single_device_mesh)
  assert int(again.step) == 5
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(first.params),
               jax.device_get(again.params))
