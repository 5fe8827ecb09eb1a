"""The loop compiles its programs once, however many steps, logs, samples and checkpoints it runs."""
import jax
import numpy as np
import pytest

from conftest import load_config, tiny
from gen import experiment as experiment_lib, train

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.mark.parametrize("name", ["dcgan_digits", "vae_digits"])
def test_compilations_do_not_grow_with_steps(name, tmp_path, single_device_mesh):
  compiles = []
  listener = lambda event, duration, **kwargs: compiles.append(event) if event == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = []
    for steps in (3, 9):
      compiles.clear()
      config = tiny(load_config(name), num_steps=steps, log_every=1, sample_every=1,
                    checkpoint_every=1)
      train.train(config, str(tmp_path / str(steps)), single_device_mesh)
      counts.append(len(compiles))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # A first run compiles the step, snapshots and a few helpers; thrice the steps (and
  # logs, samples, checkpoints) must not compile anything more.
  assert counts[0] > 0
  assert counts[1] <= counts[0], counts


def test_the_non_finite_guard_checks_each_leaf_once(single_device_mesh):
  # The guard's flag, fused into a select per leaf, once made the step's program quadratic in
  # its number of leaves (CycleGAN's: 200,000 lines of HLO, 40 s to compile unoptimised).
  experiment = experiment_lib.build(tiny(load_config("gan_ring2d")), single_device_mesh)
  state = experiment.init_state()
  program = experiment.compile_train_step(state).as_text()
  leaves = [x for x in jax.tree.leaves((state.modules, state.family_state))
            if np.issubdtype(x.dtype, np.inexact)]
  checks = program.count(" is-finite(")
  # Each leaf of the new state once, and the metrics.
  assert len(leaves) <= checks <= len(leaves) + 20, (checks, len(leaves))
