"""The train step on 8 virtual CPU devices equals the step on 1 device."""
import re

import jax
import numpy as np
import pytest

import tensorflow_datasets as tfds

from conftest import load_config, tiny
from gen import UsageError, experiment as experiment_lib, sharding


def _one_step(config, devices, steps: int = 1):
  experiment = experiment_lib.build(config, sharding.make_mesh(devices))
  state = experiment.init_state()
  initial = jax.device_get(state.params)
  batch = experiment.read_batch(np.arange(experiment.step_batch_size))
  step = experiment.compile_train_step(state)
  for _ in range(steps):
    state, metrics = step(state, sharding.shard_batch(batch, experiment.mesh))
  # Everything a step carries forward: params, BatchNorm and spectral-norm state, EMA.
  carried = {name: (m.params, m.batch_stats, m.ema) for name, m in state.modules.items()}
  carried["family_state"] = (state.family_state, {}, None)
  return initial, jax.device_get(carried), jax.device_get(metrics), state, step.as_text()


# Every GAN option at once, conditional: spectral norm's power iteration, R1's input
# gradients, DiffAugment's per-example draws and n_critic's batch split must all be
# independent of how the batch is split over devices. (WGAN-GP's penalty is left out: its
# input gradients are R1's and its per-example draws DiffAugment's, and it added 30% to this
# test's time.)
EVERYTHING = {"model.spectral_norm": True, "gan.loss": "hinge", "gan.n_critic": 2,
              "gan.r1": 1.0, "gan.ema_decay": 0.99, "gan.diffaugment": "color,translation,cutout"}


# CycleGAN's history pools, one slot a row (16 over 16 rows) so that the second step draws
# its swaps, with the generators' EMA and DiffAugment's per-example draws (spectral norm and
# R1 go through the same discriminator code as in the case above).
CYCLEGAN = {"model.generator_width": 4, "model.residual_blocks": 1,
            "model.discriminator_width": 4, "cyclegan.pool_size": 16,
            "gan.ema_decay": 0.99, "gan.diffaugment": "translation,cutout"}


@pytest.mark.parametrize("name, overrides, steps", [
    ("dcgan_digits", {}, 1), ("vae_digits", {}, 1), ("gan_ring2d", {}, 1),
    ("cdcgan_digits", EVERYTHING, 1),
    ("gpt_pydoc", {"model.dropout": 0.1, "lm.accumulation_steps": 2}, 1),
    ("cyclegan_digits", CYCLEGAN, 2)])
def test_sharded_step_matches_single_device(name, overrides, steps):
  assert jax.device_count() == 8
  config = tiny(load_config(name), batch_size=16, **overrides)
  with tfds.testing.mock_data(num_examples=64):
    initial, params_1, metrics_1, _, _ = _one_step(config, jax.devices()[:1], steps)
    _, params_8, metrics_8, state_8, program = _one_step(config, jax.devices(), steps)
  # The step really ran on 8 devices, with replicated params.
  leaf = jax.tree.leaves(state_8.params)[0]
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  # What a family keeps per batch row stays split over the devices as the batch is.
  for leaf in jax.tree.leaves(state_8.family_state.get(sharding.PER_ROW, {})):
    assert leaf.sharding.shard_shape(leaf.shape)[0] == leaf.shape[0] // 8
  # Data parallelism moves gradients, not examples: all-reduces only. (Batches appended along
  # the sharded axis once put all-gathers in the GAN step, which XLA:CPU ran in different
  # orders on different devices and deadlocked.)
  moved = sorted(set(re.findall(r"\b(all-gather|all-to-all|collective-permute|reduce-scatter)",
                                program)))
  assert not moved, moved
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-5, atol=1e-5, err_msg=key)
  assert jax.tree.structure(params_1) == jax.tree.structure(params_8)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_1), jax.tree.leaves(params_8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  # The step moved the params, so the comparison is not between two initial states.
  moved = [np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(initial), jax.tree.leaves({n: p for n, (p, _, _) in params_1.items()
                                                 if n != "family_state"}))]
  assert max(moved) > 1e-5


def test_indivisible_batch_is_a_clear_error():
  mesh = sharding.make_mesh(jax.devices())
  with pytest.raises(UsageError, match=r"batch_size=12 .* multiple of the device count \(8"):
    sharding.check_batch_size(12, mesh)
  sharding.check_batch_size(16, mesh)


@pytest.mark.parametrize("shape", [(12, 3), (12, 0), (12,)])
def test_split_batches_undoes_join_batches(shape):
  """Also for rows of no width: an InfoGAN with no continuous codes splits Q's [2B, 0] means
  into the real and the fake halves."""
  a, b = np.arange(np.prod(shape)).reshape(shape), -np.arange(np.prod(shape)).reshape(shape) - 1
  joined = sharding.join_batches(a, b)
  assert joined.shape == (2 * shape[0], *shape[1:])
  if shape[1:] != (0,):
    np.testing.assert_array_equal(joined[1::2], b)  # Interleaved: a0, b0, a1, b1, ...
  first, second = sharding.split_batches(joined, 2)
  np.testing.assert_array_equal(first, a)
  np.testing.assert_array_equal(second, b)
  assert first.shape == second.shape == shape
