"""The language-model family: its loss, schedule, optimizer and accumulation against closed
forms; text snapshots; evaluation against NumPy; sampling that is the same on 1 and 8 devices
and after a resume; bad sampling input named before anything compiles."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, cli_env, load_config, tiny
from gen import UsageError, experiment as experiment_lib, sharding, train
from gen.families import lm


def tiny_lm(**overrides):
  # Without dropout (gpt_pydoc's is 0.2), so that micro-batches and devices draw no masks of
  # their own and steps compare exactly; a test that wants dropout sets it.
  return tiny(load_config("gpt_pydoc"), **{"model.dropout": 0.0, **overrides})


def _leaves(tree):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_a_model_of_uniform_logits_has_loss_log_vocab_size(single_device_mesh):
  experiment = experiment_lib.build(tiny_lm(), single_device_mesh)
  params = jax.device_get(experiment.init_state().params["gpt"])
  loss = lm.make_loss(experiment.models, experiment.config)
  tokens = experiment.read_batch(np.arange(8))["tokens"]
  uniform = jax.tree.map(np.zeros_like, params)  # Tied output: a zero embedding, zero logits.
  assert float(loss(uniform, tokens, train=False)) == pytest.approx(math.log(128), abs=1e-6)
  # And the loss of the initial model is NumPy's cross-entropy of its logits.
  logits = np.asarray(experiment.models["gpt"].apply({"params": params}, tokens[:, :-1]), np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_p, tokens[:, 1:, None], -1).mean()
  assert float(loss(params, tokens, train=False)) == pytest.approx(expected, rel=1e-5)


def _nanogpt_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
  """nanoGPT's train.py get_lr."""
  if it < warmup_iters:
    return learning_rate * (it + 1) / (warmup_iters + 1)
  if it > lr_decay_iters:
    return min_lr
  decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def test_the_schedule_is_nanogpts_and_the_step_reports_it(single_device_mesh):
  config = tiny_lm(num_steps=12, **{"optimizer.gpt.warmup_steps": 3,
                                    "optimizer.gpt.decay_steps": 9})
  schedule = lm.learning_rate_schedule(config)
  o = config.optimizer.gpt
  for it in range(15):
    assert float(schedule(it)) == pytest.approx(
        _nanogpt_lr(it, o.learning_rate, o.min_learning_rate, 3, 9), rel=1e-6)
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  step = experiment.compile_train_step(state)
  batch = sharding.shard_batch(experiment.read_batch(np.arange(16)), experiment.mesh)
  for it in range(4):
    state, metrics = step(state, batch)
    assert float(metrics["learning_rate"]) == pytest.approx(float(schedule(it)), rel=1e-6)
    assert float(metrics["grad_norm"]) > 0 and np.isfinite(float(metrics["loss"]))


def test_weight_decay_applies_to_matrices_and_embeddings_only():
  config = tiny_lm()
  optimizer = lm.make_optimizers(config, ["gpt"])["gpt"]
  params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4), "embedding": jnp.ones((5, 4)),
            "scale": jnp.ones(4)}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero, optimizer.init(params), params)
  lr = float(lm.learning_rate_schedule(config)(0))
  wd = config.optimizer.gpt.weight_decay
  np.testing.assert_allclose(updates["kernel"], -lr * wd, rtol=1e-6)
  np.testing.assert_allclose(updates["embedding"], -lr * wd, rtol=1e-6)
  assert not np.any(updates["bias"]) and not np.any(updates["scale"])


def test_gradient_clipping_bounds_the_update_norm_and_reports_the_norm_before():
  config = tiny_lm(**{"optimizer.gpt.grad_clip": 0.5, "optimizer.gpt.weight_decay": 0.0,
                      "optimizer.gpt.b1": 0.0, "optimizer.gpt.b2": 0.0})
  optimizer = lm.make_optimizers(config, ["gpt"])["gpt"]
  params = {"kernel": jnp.ones((2, 2))}
  grads = {"kernel": jnp.full((2, 2), 10.0)}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  # b1 = b2 = 0: Adam's step is the gradient's sign; clipping rescales before it, so signs stay.
  lr = float(lm.learning_rate_schedule(config)(0))
  np.testing.assert_allclose(updates["kernel"], -lr, rtol=1e-4)


def _one_step(config, mesh):
  experiment = experiment_lib.build(config, mesh)
  state = experiment.init_state()
  step = experiment.compile_train_step(state)
  batch = experiment.read_batch(np.arange(experiment.step_batch_size))
  state, metrics = step(state, sharding.shard_batch(batch, experiment.mesh))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_accumulated_micro_batches_give_the_one_batch_update(single_device_mesh):
  params_1, metrics_1 = _one_step(tiny_lm(), single_device_mesh)
  params_4, metrics_4 = _one_step(tiny_lm(**{"lm.accumulation_steps": 4}), single_device_mesh)
  for key in ("loss", "grad_norm"):
    assert float(metrics_4[key]) == pytest.approx(float(metrics_1[key]), rel=1e-5)
  # Adam's first step is about ±lr (2e-3) per weight, the sign of the gradient: a gradient
  # that differed would move many weights by that much, not by float noise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5),
               params_1, params_4)


def test_training_writes_text_snapshots_and_a_text_summary(tmp_path, single_device_mesh):
  config = tiny_lm(num_steps=2, sample_every=2)
  train.train(config, str(tmp_path), single_device_mesh)
  snapshot = (tmp_path / "samples" / "step_2.txt").read_text()
  assert snapshot.startswith("Sample 1:") and 'The "for" statement' in snapshot
  assert "A list is" in snapshot and snapshot.count("~~~~") == 4
  assert snapshot in (tmp_path / "summary.md").read_text()
  fixed = json.loads((tmp_path / "fixed_config.json").read_text())
  assert fixed["files"] == {"dataset.tokenizer.path": "tokenizer.json"}
  assert json.loads((tmp_path / "config.json").read_text())["dataset"]["sha256"] == (
      fixed["values"]["dataset.sha256"])
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(r["tokens_per_sec"] > 0 and 0 < r["learning_rate"] for r in records)


def test_likelihood_is_numpys_mean_cross_entropy_of_the_validation_windows(single_device_mesh):
  from gen import data, evaluate
  config = tiny_lm(**{"eval.metrics": ("likelihood",), "eval.num_windows": 0})
  experiment = experiment_lib.build(config, single_device_mesh)
  state = experiment.init_state()
  results = evaluate.make_evaluator(experiment)(state)
  validation = data.load(config.dataset, "validation")
  tokens = validation.tokens
  starts = np.arange(0, len(tokens) - 16, 16)
  assert len(starts) == (len(tokens) - 1) // 16  # Every token after the first, once.
  apply = jax.jit(lambda x: experiment.models["gpt"].apply({"params": state.params["gpt"]}, x))
  total = 0.0
  for chunk in np.array_split(starts, 8):
    windows = tokens[chunk[:, None] + np.arange(17)]
    logits = np.asarray(apply(windows[:, :-1]), np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    total += (log_z - np.take_along_axis(logits, windows[:, 1:, None], -1)[..., 0]).sum()
  loss = total / (len(starts) * 16)
  assert results["loss"] == pytest.approx(loss, rel=1e-5)
  assert results["bits_per_char"] == pytest.approx(loss / math.log(2), rel=1e-5)
  assert results["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_distinct_n_and_self_bleu():
  assert lm.distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
  assert lm.distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)
  assert lm.self_bleu(["the same words here again"] * 3) == pytest.approx(100.0)
  assert lm.self_bleu(["alpha beta gamma delta", "one two three four"]) < 1.0


def _sample(config, workdir, mesh, **flags):
  return experiment_lib.sample(config, str(workdir), 5, str(workdir / "out.txt"), mesh, **flags)


def test_samples_are_the_same_on_1_and_8_devices_and_after_a_resume(tmp_path, single_device_mesh):
  flags = {"prompt": "The", "max_new_tokens": 10, "temperature": 1.0, "top_k": 20, "top_p": 0.95}
  train.train(tiny_lm(num_steps=4), str(tmp_path / "straight"), single_device_mesh)
  train.train(tiny_lm(num_steps=2), str(tmp_path / "resumed"), single_device_mesh)
  train.train(tiny_lm(num_steps=4), str(tmp_path / "resumed"), single_device_mesh)
  one = _sample(tiny_lm(), tmp_path / "straight", single_device_mesh, **flags)
  eight = _sample(tiny_lm(), tmp_path / "straight", sharding.make_mesh(jax.devices()), **flags)
  resumed = _sample(tiny_lm(), tmp_path / "resumed", single_device_mesh, **flags)
  assert one == eight == resumed
  assert (tmp_path / "straight" / "out.txt").read_text() == one
  assert one.count("~~~~\nThe") == 5 and len(set(one.split("Sample")[1:])) == 5
  greedy = _sample(tiny_lm(), tmp_path / "straight", single_device_mesh, prompt="The",
                   max_new_tokens=10, top_k=1)
  assert len({block.split(":", 1)[1].strip() for block in greedy.split("Sample")[1:]}) == 1


@pytest.mark.parametrize("flags, message", [
    ({"prompt": "naïve ☃"}, r"2 character\(s\) outside this character-level vocabulary"),
    ({"prompt": "abc", "max_new_tokens": 14}, r"The prompt of 3 tokens plus --max_new_tokens=14 "
                                              r"is 17 tokens, more than .*block_size=16"),
    ({"top_p": 0.0}, r"--top_p=0.0 must be in \(0, 1\]"),
    ({"temperature": -1.0}, r"--temperature=-1.0 must be a finite number of at least 0"),
    ({"prompt": "a", "prompt_file": "x"}, "Give --prompt or --prompt_file, not both"),
])
def test_bad_sampling_input_is_named_before_restoring_or_compiling(flags, message, tmp_path,
                                                                    single_device_mesh):
  # The workdir has no checkpoint: the flags' error must come first.
  with pytest.raises(UsageError, match=message):
    _sample(tiny_lm(), tmp_path, single_device_mesh, **flags)
  assert not (tmp_path / "out.txt").exists()


def test_a_dataset_that_is_not_text_or_a_vocabulary_too_small_is_named(single_device_mesh):
  config = tiny_lm(**{"model.vocab_size": 50})
  with pytest.raises(UsageError, match=r"tokenizer has \d+ tokens, more than config.model"
                                       r".vocab_size=50"):
    experiment_lib.build(config, single_device_mesh).spec
  config = tiny_lm(**{"dataset.name": "digits"})
  with pytest.raises(UsageError):
    experiment_lib.build(config, single_device_mesh).spec


def test_the_command_line_trains_and_samples_from_a_prompt_file(tmp_path):
  overrides = ["--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
               "--config.model.block_size=16", "--config.batch_size=8", "--config.num_steps=2",
               "--config.lm.snapshot_tokens=4"]
  base = [sys.executable, "-m", "gen.main", "--config=experiments/gpt_pydoc.py",
          f"--workdir={tmp_path}"]
  run = lambda *args: subprocess.run([*base, *overrides, *args], cwd=ROOT, env=cli_env(),
                                     capture_output=True, text=True, timeout=300)
  trained = run()
  assert trained.returncode == 0, trained.stderr[-3000:]
  (tmp_path / "prompts.txt").write_text("The\nA list\\nis\n")
  sampled = run("--mode=sample", f"--prompt_file={tmp_path / 'prompts.txt'}", "--num_samples=3",
                "--max_new_tokens=5", "--top_k=1")
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  written = (tmp_path / "samples.txt").read_text()
  assert written.strip() in sampled.stdout and written.count("Sample ") == 3
  assert "~~~~\nA list\nis" in written
  too_long = run("--mode=sample", "--prompt=The", "--max_new_tokens=100")
  assert too_long.returncode == 2 and "more than the model's context" in too_long.stderr
