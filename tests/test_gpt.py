"""The GPT model and cached decoding: the cache gives the full forward pass's logits, greedy
decoding is the argmax of full passes, rows stop at end-of-text, and sampling filters as
defined (NumPy references)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen import UsageError, decode
from gen.models.gpt import GPT

VOCAB, BLOCK = 37, 96


@pytest.fixture(scope="module")
def model_and_params():
  model = GPT(VOCAB, BLOCK, n_layer=2, n_head=2, n_embd=32)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, BLOCK), jnp.int32))
  # Larger weights than GPT-2's init, so that the logits differ clearly between positions.
  variables = jax.tree.map(lambda x: x * 4.0, variables)
  return model, variables


def _prompts(lengths, seed=1):
  """Left-padded prompts [B, P] (padding with random tokens too: it must not matter)."""
  rng = np.random.default_rng(seed)
  prompts = rng.integers(0, VOCAB, (len(lengths), max(lengths))).astype(np.int32)
  return prompts, np.asarray(lengths, np.int32)


def _prompt(prompts, lengths, row):
  return prompts[row, prompts.shape[1] - lengths[row]:]


def _generate(model, variables, prompts, lengths, new, key=0, temperature=1.0, top_k=0,
              top_p=1.0, eot_id=None, return_logits=False):
  generate = jax.jit(decode.make_generate(model, new, top_k, top_p < 1, eot_id, return_logits))
  return jax.device_get(generate(variables, prompts, lengths, jax.random.key(key), temperature,
                                 top_p, jnp.arange(len(lengths), dtype=jnp.int32)))


def test_cached_decoding_gives_the_full_forward_pass_logits(model_and_params):
  model, variables = model_and_params
  prompts, lengths = _prompts([5, 17, 1])
  new = 64
  out = _generate(model, variables, prompts, lengths, new, return_logits=True)
  full_pass = jax.jit(lambda tokens: model.apply(variables, tokens))
  for row, length in enumerate(lengths):
    sequence = np.concatenate([_prompt(prompts, lengths, row), out["tokens"][row]])
    logits = np.asarray(full_pass(sequence[None]))[0]
    # The logits that chose new token i are the full pass's at position length - 1 + i.
    expected = logits[length - 1:length - 1 + new]
    np.testing.assert_allclose(out["logits"][row], expected, atol=1e-4, rtol=0)
    assert np.abs(np.diff(expected, axis=0)).max() > 0.1  # Positions do differ.


def test_greedy_decoding_is_the_argmax_of_full_passes(model_and_params):
  model, variables = model_and_params
  prompts, lengths = _prompts([3, 8])
  new = 24
  greedy = _generate(model, variables, prompts, lengths, new, top_k=1)["tokens"]
  zero_temperature = _generate(model, variables, prompts, lengths, new, temperature=0.0)["tokens"]
  np.testing.assert_array_equal(greedy, zero_temperature)
  full_pass = jax.jit(lambda tokens: model.apply(variables, tokens))
  for row, length in enumerate(lengths):
    sequence = list(_prompt(prompts, lengths, row))
    for _ in range(new):
      padded = np.zeros((1, BLOCK), np.int32)  # Causal: the padding after is never seen.
      padded[0, :len(sequence)] = sequence
      sequence.append(int(np.argmax(np.asarray(full_pass(padded))[0, len(sequence) - 1])))
    np.testing.assert_array_equal(greedy[row], sequence[length:])
  assert len(set(greedy[0])) > 1


def test_a_row_stops_at_end_of_text_and_the_others_go_on(model_and_params):
  model, variables = model_and_params
  prompts, lengths = _prompts([4, 9, 2])
  plain = _generate(model, variables, prompts, lengths, 20, top_k=1)["tokens"]
  eot = int(plain[0, 5])  # Row 0 writes it at position 5 (or before).
  stopped = _generate(model, variables, prompts, lengths, 20, top_k=1, eot_id=eot)["tokens"]
  for row in range(3):
    hits = np.flatnonzero(plain[row] == eot)
    first = hits[0] if len(hits) else 20
    np.testing.assert_array_equal(stopped[row, :first + 1], plain[row, :first + 1])
    assert (stopped[row, first:] == eot).all()
  assert np.flatnonzero(plain[0] == eot)[0] <= 5


def test_a_rows_samples_depend_on_its_key_and_row_id_alone(model_and_params):
  model, variables = model_and_params
  prompts, lengths = _prompts([6, 6, 6, 6])
  prompts[:] = prompts[0]
  out = _generate(model, variables, prompts, lengths, 16, key=3)["tokens"]
  assert len({tuple(r) for r in out}) == 4  # Same prompt, own draws.
  alone = jax.jit(decode.make_generate(model, 16))(
      variables, prompts[2:3], lengths[2:3], jax.random.key(3), 1.0, 1.0, jnp.asarray([2]))
  np.testing.assert_array_equal(np.asarray(alone["tokens"])[0], out[2])


def _numpy_filter(logits, top_k, top_p):
  logits = logits.astype(np.float64).copy()
  for row in logits:
    if top_k:
      row[row < np.sort(row)[-top_k]] = -np.inf
    order = np.argsort(-row, kind="stable")
    p = np.exp(row[order] - row[order][0])
    p /= p.sum()
    keep = np.cumsum(p) - p < top_p
    row[order[~keep]] = -np.inf
  return logits


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (5, 1.0), (5, 0.5), (1, 1.0), (0, 1e-6)])
def test_top_k_and_top_p_filter_as_numpy_does(top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(6, 50)).astype(np.float32) * 3
  filtered = np.asarray(decode.filter_logits(jnp.asarray(logits), top_k, top_p, top_p < 1))
  expected = _numpy_filter(logits, top_k, top_p)
  np.testing.assert_array_equal(np.isinf(filtered), np.isinf(expected))
  np.testing.assert_allclose(filtered[np.isfinite(filtered)], logits[np.isfinite(expected)])


def test_sampling_draws_from_the_tempered_distribution():
  logits = jnp.asarray([[0.0, 1.0, 2.0, -1.0]] * 20000)
  keys = jax.random.split(jax.random.key(0), 20000)
  tokens = np.asarray(decode.sample_tokens(logits, keys, 0.5, top_k=3))
  p = np.exp(np.array([0.0, 1.0, 2.0]) / 0.5)
  p /= p.sum()
  frequencies = np.bincount(tokens, minlength=4) / len(tokens)
  np.testing.assert_allclose(frequencies[:3], p, atol=0.015)
  assert frequencies[3] == 0


@pytest.mark.parametrize("temperature, top_k, top_p, message", [
    (-0.5, 0, 1.0, r"--temperature=-0.5 must be a finite number of at least 0"),
    (1.0, -1, 1.0, r"--top_k=-1 must be an integer of at least 0"),
    (1.0, 0, 0.0, r"--top_p=0.0 must be in \(0, 1\]"),
    (1.0, 0, 1.5, r"--top_p=1.5 must be in \(0, 1\]"),
])
def test_bad_sampling_values_are_named(temperature, top_k, top_p, message):
  with pytest.raises(UsageError, match=message):
    decode.check_sampling(temperature, top_k, top_p)


def test_initialisation_is_gpt2s():
  model = GPT(64, 16, n_layer=2, n_head=4, n_embd=256)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  block = params["h_1"]
  for kernel in (block["attn"]["c_attn"]["kernel"], block["mlp"]["c_fc"]["kernel"],
                 params["wte"]["embedding"], params["wpe"]["embedding"]):
    assert np.std(kernel) == pytest.approx(0.02, rel=0.05)
  for kernel in (block["attn"]["c_proj"]["kernel"], block["mlp"]["c_proj"]["kernel"]):
    assert np.std(kernel) == pytest.approx(0.02 / np.sqrt(4), rel=0.05)
  assert not np.any(block["attn"]["c_attn"]["bias"]) and np.all(block["ln_1"]["scale"] == 1)


def test_bfloat16_computes_in_bf16_with_float32_params_and_logits():
  model = GPT(VOCAB, 16, n_layer=1, n_head=2, n_embd=32, dtype=jnp.bfloat16, use_bias=False)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert "bias" not in variables["params"]["h_0"]["attn"]["c_attn"]
  logits = jax.jit(model.apply)(variables, jnp.ones((2, 16), jnp.int32))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_remat_gives_the_same_gradients():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 17)), jnp.int32)
  grads = []
  for remat in (False, True):
    model = GPT(VOCAB, 16, n_layer=1, n_head=2, n_embd=32, remat=remat)
    variables = jax.jit(model.init)(jax.random.key(0), tokens[:, :-1])
    loss = lambda v: jnp.mean(jax.nn.log_softmax(model.apply(v, tokens[:, :-1]))[
        jnp.arange(2)[:, None], jnp.arange(16), tokens[:, 1:]])
    grads.append(jax.jit(jax.grad(loss))(variables))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *grads)
