"""GPT-2 checkpoints: gen -> safetensors -> gen is exact; a converted workdir samples and
fine-tunes with its own sizes whatever the experiment says, without the experiment's data; and
where torch and transformers are installed, a Hugging Face GPT-2 gives the same logits and
greedy continuation in gen."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import load_config, tiny
from gen import UsageError, convert, decode, experiment as experiment_lib, text, tokenizers, train
from gen.models.gpt import GPT

SIZES = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64}
VOCAB = 300


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  """A byte-level BPE of 300 tokens, as GPT-2's vocab.json + merges.txt."""
  directory = tmp_path_factory.mktemp("bpe")
  tokenizer = tokenizers.train_bpe([text.pydoc_split("train")[:50_000]], VOCAB)
  tokenizer.tokenizer.model.save(str(directory))
  return directory, tokenizer


def _random_params(scale=3.0, seed=0):
  model = GPT(VOCAB, SIZES["n_positions"], SIZES["n_layer"], SIZES["n_head"], SIZES["n_embd"])
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  # Biases and LayerNorm offsets are zero at init: give every tensor values of its own.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [x * scale + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return model, jax.device_get(jax.tree.unflatten(tree, noisy))


def _write_checkpoint(directory, params, bpe_dir):
  directory.mkdir(parents=True, exist_ok=True)
  save_file(convert.to_gpt2(params), str(directory / "model.safetensors"))
  (directory / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "vocab_size": VOCAB, "activation_function": "gelu_new",
       "layer_norm_epsilon": 1e-5, **SIZES}))
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(bpe_dir / name, directory / name)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)


def test_gen_to_safetensors_to_gen_is_exact_with_or_without_the_prefix(tmp_path, bpe):
  _, params = _random_params()
  _write_checkpoint(tmp_path, params, bpe[0])
  _, tensors = convert.read_checkpoint(str(tmp_path))
  assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out).
  _equal(convert.from_gpt2(tensors), params)
  bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), bool))  # A buffer, not a weight.
  bare["h.0.attn.masked_bias"] = np.asarray(-1e4, np.float32)
  bare["lm_head.weight"] = bare["wte.weight"]
  _equal(convert.from_gpt2(bare), params)
  with pytest.raises(UsageError, match=r"not GPT-2's: \['h.0.adapter.weight'\]"):
    convert.from_gpt2({**bare, "h.0.adapter.weight": np.zeros(3)})
  with pytest.raises(UsageError, match="lm_head.weight differs"):
    convert.from_gpt2({**bare, "lm_head.weight": bare["wte.weight"] + 1})
  with pytest.raises(UsageError, match="activation_function='relu'"):
    convert.sizes({**SIZES, "vocab_size": VOCAB, "activation_function": "relu"})


def test_a_converted_workdir_samples_and_fine_tunes_with_its_own_sizes_and_no_data(
    tmp_path, bpe, single_device_mesh, monkeypatch):
  model, params = _random_params()
  _write_checkpoint(tmp_path / "hf", params, bpe[0])
  # gpt2_124m names lm1b, which is not prepared here: nothing may read it.
  monkeypatch.setattr(text, "_tfds_documents", lambda *a: pytest.fail("read the dataset"))
  workdir = str(tmp_path / "converted")
  convert.convert_gpt2(str(tmp_path / "hf"), workdir, load_config("gpt2_124m"),
                       single_device_mesh)
  experiment = experiment_lib.build(load_config("gpt2_124m"), single_device_mesh, workdir)
  m = experiment.config.model
  assert (m.n_layer, m.n_embd, m.block_size, m.vocab_size) == (2, 32, 64, VOCAB)
  state = experiment_lib.restore_latest(experiment, workdir)
  assert int(state.step) == 0
  _equal(jax.device_get(state.params["gpt"]), params)

  prompt = "The \"if\" statement"
  tokens = bpe[1].encode(prompt)
  greedy = jax.jit(decode.make_generate(model, 12, top_k=1))(
      {"params": params}, tokens[None], jnp.asarray([len(tokens)]), jax.random.key(0), 1.0, 1.0,
      jnp.zeros(1, jnp.int32))["tokens"][0]
  sampled = experiment_lib.sample(load_config("gpt2_124m"), workdir, 2, None, single_device_mesh,
                                  prompt=prompt, max_new_tokens=12, top_k=1)
  expected = prompt + bpe[1].decode(greedy)
  if bpe[1].eot_id in np.asarray(greedy):
    expected = prompt + bpe[1].decode(greedy[:np.argmax(np.asarray(greedy) == bpe[1].eot_id)])
  assert sampled.count(f"~~~~\n{expected}\n~~~~") == 2

  # Fine-tuning: another experiment starts from the converted parameters and sizes, and its
  # own workdir then fixes them too.
  config = tiny(load_config("gpt_pydoc"), num_steps=1, init_from=workdir)
  fine_tuning = experiment_lib.build(config, single_device_mesh)
  assert fine_tuning.config.model.n_embd == 32 and fine_tuning.dataset.tokenizer.vocab_size == VOCAB
  _equal(jax.device_get(fine_tuning.init_state().params["gpt"]), params)
  train.train(config, str(tmp_path / "tuned"), single_device_mesh)
  again = experiment_lib.build(tiny(load_config("gpt_pydoc")), single_device_mesh,
                               str(tmp_path / "tuned"))
  assert again.config.model.vocab_size == VOCAB and again.dataset.tokenizer.kind == "bpe"
  experiment_lib.restore_latest(again, str(tmp_path / "tuned"))


def test_converting_into_a_workdir_with_checkpoints_is_refused(tmp_path, bpe, single_device_mesh):
  _, params = _random_params()
  _write_checkpoint(tmp_path / "hf", params, bpe[0])
  config = load_config("gpt2_124m")
  convert.convert_gpt2(str(tmp_path / "hf"), str(tmp_path / "w"), config, single_device_mesh)
  with pytest.raises(UsageError, match="already holds checkpoints"):
    convert.convert_gpt2(str(tmp_path / "hf"), str(tmp_path / "w"), config, single_device_mesh)
  with pytest.raises(UsageError, match="lacks"):
    convert.read_checkpoint(str(tmp_path))


def test_hugging_faces_gpt2_gives_the_same_logits_and_greedy_continuation(tmp_path, bpe,
                                                                          single_device_mesh):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  eot = bpe[1].eot_id
  hf_config = transformers.GPT2Config(vocab_size=VOCAB, bos_token_id=eot, eos_token_id=eot,
                                      pad_token_id=eot, **SIZES)
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(hf_config).eval()
  with torch.no_grad():  # Weights far from init, so that logits differ clearly.
    for p in hf.parameters():
      p.add_(torch.randn_like(p) * 0.3)
  hf.save_pretrained(tmp_path / "hf")
  hf.transformer.save_pretrained(tmp_path / "bare")  # GPT2Model: keys without the prefix.
  for directory in ("hf", "bare"):
    for name in ("vocab.json", "merges.txt"):
      shutil.copy(bpe[0] / name, tmp_path / directory / name)
  convert.convert_gpt2(str(tmp_path / "hf"), str(tmp_path / "w"), load_config("gpt2_124m"),
                       single_device_mesh)
  experiment = experiment_lib.build(load_config("gpt2_124m"), single_device_mesh,
                                    str(tmp_path / "w"))
  params = jax.device_get(experiment_lib.restore_latest(experiment, str(tmp_path / "w"))
                          .params["gpt"])
  _equal(convert.from_gpt2(convert.read_checkpoint(str(tmp_path / "bare"))[1]), params)

  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 40))
  with torch.no_grad():
    expected = hf(torch.from_numpy(tokens)).logits.numpy()
  gpt = experiment.models["gpt"]
  logits = np.asarray(jax.jit(gpt.apply)({"params": params}, jnp.asarray(tokens, jnp.int32)))
  assert np.abs(expected).max() > 1.0
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

  prompt = bpe[1].encode("The \"with\" statement")
  with torch.no_grad():
    continued = hf.generate(torch.from_numpy(prompt[None]).long(), max_new_tokens=32,
                            do_sample=False, attention_mask=torch.ones(1, len(prompt)).long())
  hf_tokens = continued[0, len(prompt):].numpy()
  gen_tokens = jax.jit(decode.make_generate(gpt, 32, top_k=1, eot_id=eot))(
      {"params": params}, prompt[None], jnp.asarray([len(prompt)]), jax.random.key(0), 1.0, 1.0,
      jnp.zeros(1, jnp.int32))["tokens"][0]
  np.testing.assert_array_equal(np.asarray(gen_tokens)[:len(hf_tokens)], hf_tokens)
  assert len(hf_tokens) == 32 or hf_tokens[-1] == eot
