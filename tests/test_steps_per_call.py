"""Several train steps per compiled call (the default on GPUs and TPUs) train as single steps
do: the same data, random numbers, logs, checkpoints and non-finite counting."""
import json

import jax
import numpy as np
import pytest

from conftest import load_config, tiny
from gen import train


def _leaves(state):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.mark.parametrize("name", ["gan_ring2d", "dcgan_digits"])
def test_four_steps_a_call_train_as_single_steps(name, tmp_path, single_device_mesh):
  # Logs every 8 steps, samples at 12, checkpoints at 10 and the end (30): the multi-step
  # calls stop short of each, and single steps fill the gaps.
  config = lambda per_call: tiny(load_config(name), num_steps=30, log_every=8, sample_every=12,
                                 checkpoint_every=10, steps_per_call=per_call)
  single = train.train(config(1), str(tmp_path / "single"), single_device_mesh)
  several = train.train(config(4), str(tmp_path / "several"), single_device_mesh)
  for a, b in zip(_leaves(single), _leaves(several)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  logged = lambda run: [json.loads(line)["step"] for line in
                        (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
  assert logged("single") == logged("several") == [8, 16, 24, 30]
  assert (sorted((tmp_path / "several" / "checkpoints").iterdir()) and
          sorted(p.name for p in (tmp_path / "several" / "checkpoints").iterdir())
          == sorted(p.name for p in (tmp_path / "single" / "checkpoints").iterdir()))
  assert {p.name for p in (tmp_path / "several" / "samples").iterdir()} == {
      p.name for p in (tmp_path / "single" / "samples").iterdir()}


def test_non_finite_steps_inside_a_call_are_counted_one_by_one(tmp_path, single_device_mesh,
                                                               monkeypatch):
  import dataclasses
  from gen import data
  load = data.load

  def poisoned(*args, **kwargs):
    dataset = load(*args, **kwargs)

    def read(idx):
      batch = dataset.read(idx)
      batch["x"] = np.where((np.asarray(idx) % 41 == 0)[:, None], np.nan, batch["x"])
      return batch

    return dataclasses.replace(dataset, read=read)

  monkeypatch.setattr(data, "load", poisoned)
  config = lambda per_call: tiny(load_config("gan_ring2d"), num_steps=24, log_every=24,
                                 max_nonfinite_steps=24, steps_per_call=per_call)
  train.train(config(1), str(tmp_path / "single"), single_device_mesh)
  train.train(config(6), str(tmp_path / "several"), single_device_mesh)
  skipped = lambda run: json.loads((tmp_path / run / "metrics.jsonl").read_text()
                                   .splitlines()[-1])["skipped_steps"]
  assert skipped("several") == skipped("single") > 0
