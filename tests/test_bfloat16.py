"""The bf16 compute policy: bf16 activations, float32 params and optimizer states, finite losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, tiny
from gen import experiment as experiment_lib, sharding


@pytest.mark.parametrize("name", ["dcgan_digits", "vae_digits", "gan_ring2d"])
def test_bfloat16_steps_are_finite_with_float32_state(name, single_device_mesh):
  config = tiny(load_config(name), **{"model.dtype": "bfloat16"})
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  step = experiment.compile_train_step(state)
  assert "bf16" in step.as_text()  # The compiled step really computes in bfloat16.
  batch = sharding.shard_batch(experiment.read_batch(np.arange(config.batch_size)),
                               experiment.mesh)
  for _ in range(3):
    state, metrics = step(state, batch)
  for key, value in jax.device_get(metrics).items():
    assert np.isfinite(value), key
  for leaf in jax.tree.leaves(state.modules):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
