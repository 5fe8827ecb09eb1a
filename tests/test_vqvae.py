"""VQ-VAE: the quantizer against NumPy, the EMA codebook, dead-code restarts, sharding, training."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import load_config, override
from gen import experiment as experiment_lib, sharding, train
from gen.models.vqvae import VectorQuantizer
from gen.families import vqvae as vqvae_steps

K, D = 16, 4


def _stats(rng, count=3, cluster_size=None):
  """A codebook state as a run would carry it, with the EMAs part-way."""
  codebook = rng.normal(size=(K, D)).astype(np.float32)
  if cluster_size is None:
    cluster_size = rng.uniform(0.1, 3.0, size=K)
  cluster_size = np.asarray(cluster_size, np.float32)
  return {"codebook": codebook, "cluster_size": cluster_size,
          "embedding_sum": (cluster_size[:, None] * codebook).astype(np.float32),
          "count": np.int32(count)}


def _brute_force_codes(z, codebook):
  flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
  distances = ((flat[:, None, :] - codebook[None].astype(np.float64))**2).sum(-1)
  return distances.argmin(1)


def test_initial_codebook_and_statistics():
  variables = VectorQuantizer(K, D).init(jax.random.key(0), jnp.zeros((1, D)))
  assert set(variables) == {"batch_stats"}  # The codebook is not trained by the optimizer.
  stats = variables["batch_stats"]
  assert stats["codebook"].shape == (K, D) and stats["embedding_sum"].shape == (K, D)
  # Sonnet's VarianceScaling(uniform) with fan-in D: U(-sqrt(3/D), sqrt(3/D)).
  assert 0.5 * np.sqrt(3 / D) < np.abs(stats["codebook"]).max() <= np.sqrt(3 / D)
  assert not np.any(stats["cluster_size"]) and not np.any(stats["embedding_sum"])
  assert int(stats["count"]) == 0


def test_straight_through_gradient_is_the_identity():
  rng = np.random.default_rng(0)
  stats = _stats(rng)
  z = jnp.asarray(rng.normal(size=(2, 3, 3, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  quantize = lambda z: VectorQuantizer(K, D).apply({"batch_stats": stats}, z)
  codes = stats["codebook"][_brute_force_codes(np.asarray(z), stats["codebook"])].reshape(z.shape)
  # Forward: the nearest codes; backward: d sum(w * quantized) / dz = w, exactly.
  np.testing.assert_allclose(quantize(z)[0], codes, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(w * quantize(z)[0]))(z), w)
  # The commitment pulls z towards its fixed code: d mean((z - sg(e))²) / dz = 2 (z - e) / n.
  np.testing.assert_allclose(jax.grad(lambda z: quantize(z)[2])(z), 2 * (z - codes) / z.size,
                             rtol=1e-5, atol=1e-7)


def test_nearest_codes_and_commitment_match_numpy_brute_force():
  rng = np.random.default_rng(1)
  stats = _stats(rng)
  z = rng.normal(size=(4, 5, 6, D)).astype(np.float32)
  quantized, indices, commitment = VectorQuantizer(K, D).apply({"batch_stats": stats}, z)
  expected = _brute_force_codes(z, stats["codebook"])
  assert indices.shape == z.shape[:-1]
  np.testing.assert_array_equal(np.asarray(indices).reshape(-1), expected)
  assert len(np.unique(expected)) > K // 2  # Many codes compete, not one that wins everywhere.
  codes = stats["codebook"][expected].reshape(z.shape)
  np.testing.assert_allclose(quantized, codes, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(commitment, np.mean((z - codes)**2), rtol=1e-5)


def _numpy_ema_update(stats, z, decay=0.99, epsilon=1e-5):
  """The paper's appendix equations with Sonnet's debiasing and Laplace smoothing, in float64."""
  flat = z.reshape(-1, D).astype(np.float64)
  one_hot = np.eye(K)[_brute_force_codes(z, stats["codebook"])]
  cluster_size = decay * stats["cluster_size"] + (1 - decay) * one_hot.sum(0)
  embedding_sum = decay * stats["embedding_sum"] + (1 - decay) * one_hot.T @ flat
  count = int(stats["count"]) + 1
  debias = 1 - decay**count
  size = cluster_size / debias
  n = size.sum()
  smoothed = (size + epsilon) / (n + K * epsilon) * n
  return {"codebook": embedding_sum / debias / smoothed[:, None], "cluster_size": cluster_size,
          "embedding_sum": embedding_sum, "count": count}


# Sonnet's values, and a large ε under which the Laplace smoothing shows.
@pytest.mark.parametrize("decay, epsilon", [(0.99, 1e-5), (0.9, 0.5)])
def test_one_ema_update_matches_numpy(decay, epsilon):
  rng = np.random.default_rng(2)
  # Code 0 has never been used and is far from every vector: its sum stays 0 and its count
  # only gets the Laplace smoothing's share, so it becomes the zero vector.
  stats = _stats(rng, cluster_size=np.r_[0.0, rng.uniform(0.1, 3.0, K - 1)])
  stats["codebook"][0] = 100.0
  stats["embedding_sum"][0] = 0.0
  z = rng.normal(size=(8, 4, 4, D)).astype(np.float32)
  quantizer = VectorQuantizer(K, D, decay=decay, epsilon=epsilon)
  (_, indices, _), updates = quantizer.apply({"batch_stats": stats}, z, train=True,
                                              mutable=["batch_stats"])
  expected = _numpy_ema_update(stats, z, decay, epsilon)
  np.testing.assert_array_equal(np.asarray(indices).reshape(-1),
                                _brute_force_codes(z, stats["codebook"]))
  actual = updates["batch_stats"]
  assert int(actual["count"]) == expected["count"] == 4
  for name in ("cluster_size", "embedding_sum", "codebook"):
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_array_equal(actual["codebook"][0], 0.0)
  # The codebook moved; without `train` nothing is updated.
  assert np.abs(actual["codebook"] - stats["codebook"]).max() > 1e-3
  _, frozen = quantizer.apply({"batch_stats": stats}, z, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, dict(frozen["batch_stats"]), stats)


def test_perplexity_and_codes_used_closed_forms():
  for k in (1, 3, 8):
    indices = jnp.tile(jnp.arange(k) * 2, 12).reshape(-1, 2, 2)  # Codes 0, 2, ...: k equally.
    usage = vqvae_steps.code_usage(indices, K)
    np.testing.assert_allclose(usage["perplexity"], k, rtol=1e-6)
    assert float(usage["codes_used"]) == k
  # Frequencies (1/2, 1/4, 1/4): entropy 1.5 ln 2, so perplexity 2^1.5.
  usage = vqvae_steps.code_usage(jnp.array([5, 5, 1, 9]), K)
  np.testing.assert_allclose(usage["perplexity"], 2**1.5, rtol=1e-6)
  assert float(usage["codes_used"]) == 3


def test_dead_code_restart_replaces_only_dead_codes():
  rng = np.random.default_rng(3)
  dead = np.arange(K) % 2 == 1
  # Live codes have large counts and every vector sits next to one; dead ones are far away.
  stats = _stats(rng, count=10, cluster_size=np.where(dead, 0.01, 5.0))
  stats["codebook"][dead] += 50.0
  stats["embedding_sum"] = (stats["cluster_size"][:, None] * stats["codebook"]).astype(np.float32)
  live_codes = stats["codebook"][~dead]
  z = (live_codes[rng.integers(len(live_codes), size=(4, 3, 3))]
       + 0.01 * rng.normal(size=(4, 3, 3, D))).astype(np.float32)

  def update(threshold, key):
    _, updates = VectorQuantizer(K, D, restart_threshold=threshold).apply(
        {"batch_stats": stats}, z, train=True, mutable=["batch_stats"],
        rngs={"restart": jax.random.key(key)})
    return jax.tree.map(np.asarray, dict(updates["batch_stats"]))

  plain, restarted = update(0.0, 0), update(1.0, 0)
  # Live codes: exactly the plain EMA update.
  for name in ("codebook", "cluster_size", "embedding_sum"):
    np.testing.assert_array_equal(restarted[name][~dead], plain[name][~dead], err_msg=name)
  # Dead codes: vectors of this batch, with one pseudo-observation of them as statistics.
  flat = z.reshape(-1, D)
  for row in restarted["codebook"][dead]:
    assert np.abs(flat - row).max(axis=1).min() == 0.0
  assert not np.allclose(restarted["codebook"][dead], plain["codebook"][dead])
  debias = 1 - 0.99**11
  np.testing.assert_allclose(restarted["cluster_size"][dead] / debias, 1.0, rtol=1e-5)
  np.testing.assert_allclose(restarted["embedding_sum"][dead] / debias,
                             restarted["codebook"][dead], rtol=1e-5)
  # The picks come from the step's key.
  assert not np.array_equal(update(1.0, 1)["codebook"][dead], restarted["codebook"][dead])


TINY = {"model.hidden": 16, "model.residual_width": 8, "model.embedding_dim": 8,
        "model.num_codes": 32}


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 8
  # Restarts on, with a threshold most codes fall under: their picks from the global batch
  # must not depend on how it is split.
  config = override(load_config("vqvae_cifar10"),
                    {**TINY, "batch_size": 16, "model.restart_threshold": 1.0})
  with tfds.testing.mock_data(num_examples=64):
    experiments = [experiment_lib.build(config, sharding.make_mesh(devices))
                   for devices in (jax.devices()[:1], jax.devices())]
    batch = experiments[0].read_batch(np.arange(16))
  # One initial state for both (initialisation is most of the compile time), copied to each
  # mesh: the steps donate their copies.
  state = experiments[0].init_state()
  initial = jax.device_get(state.params)
  results = []
  for experiment in experiments:
    placed = jax.device_put(state, experiment.state_sharding(), may_alias=False)
    new_state, metrics = experiment.compile_train_step(placed)(
        placed, sharding.shard_batch(batch, experiment.mesh))
    results.append((new_state, jax.device_get(metrics), jax.device_get(
        {"params": new_state.params, "batch_stats": new_state.modules["vqvae"].batch_stats})))
  (_, metrics_1, carried_1), (state_8, metrics_8, carried_8) = results
  leaf = jax.tree.leaves(state_8.modules["vqvae"].batch_stats)[0]
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  assert set(metrics_1) == {"loss", "reconstruction", "commitment", "perplexity", "codes_used",
                            "update_skipped"}
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-5, atol=1e-5, err_msg=key)
  assert jax.tree.structure(carried_1) == jax.tree.structure(carried_8)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(carried_1),
                          jax.tree.leaves(carried_8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  stats = carried_1["batch_stats"]["quantizer"]
  assert int(stats["count"]) == 1
  # The step moved the params; unused codes restarted instead of collapsing to 0.
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(initial),
                                                  jax.tree.leaves(carried_1["params"]))) > 1e-5
  assert metrics_1["codes_used"] < 32 and np.abs(stats["codebook"]).max(axis=1).min() > 0


def test_tiny_config_trains_evaluates_and_checkpoints_its_codebook(tmp_path,
                                                                   single_device_mesh):
  steps = 40
  config = override(load_config("vqvae_cifar10"), {
      **TINY, "dataset.name": "digits", "batch_size": 32, "num_steps": steps, "log_every": 1,
      "sample_every": steps, "checkpoint_every": steps, "eval_every": steps,
      "optimizer.vqvae.learning_rate": 1e-3})
  state = train.train(config, str(tmp_path), single_device_mesh)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == steps + 1  # Every step, and the evaluation's line.
  assert all(np.isfinite(v) for r in records for v in r.values())
  reconstruction = [r["reconstruction"] for r in records if "reconstruction" in r]
  assert np.mean(reconstruction[-5:]) < 0.8 * np.mean(reconstruction[:5])
  assert all(1.0 <= r["perplexity"] <= r["codes_used"] + 1e-3 for r in records if "perplexity" in r)
  evaluation = json.loads((tmp_path / "eval" / f"{steps}.json").read_text())
  assert np.isfinite(evaluation["psnr"]) and 0 < evaluation["ssim"] <= 1
  assert (tmp_path / "samples" / f"reconstructions_step_{steps}.png").exists()
  assert (tmp_path / "samples" / f"step_{steps}.png").exists()
  # The checkpoint holds the EMA codebook.
  restored = experiment_lib.restore_latest(experiment_lib.build(config, single_device_mesh), str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.modules["vqvae"].batch_stats),
               jax.device_get(state.modules["vqvae"].batch_stats))


def test_bad_shapes_are_usage_errors():
  from gen import UsageError, models
  config = load_config("vqvae_cifar10")
  with pytest.raises(UsageError, match="divisible by 4"):
    models.build(config.model, (30, 32, 3))
