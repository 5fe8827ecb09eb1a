"""GPT-2 checkpoints to and from Hugging Face's format.

  python -m gen.convert gpt2 --from=DIR --workdir=DIR [--experiment=gpt2_124m]
  python -m gen.convert to_gpt2 --workdir=DIR --to=DIR [--experiment=gpt2_124m]

`gpt2` reads a Hugging Face GPT-2 checkpoint directory (config.json, model.safetensors,
vocab.json, merges.txt; as `GPT2LMHeadModel.save_pretrained` writes it, or as the Hub serves
it) into a gen workdir: a checkpoint at step 0, GPT-2's tokenizer, and the checkpoint's own
sizes, which the workdir fixes (gen.experiment), so that

  ./launch.sh gpt2_124m --workdir=DIR --mode=sample --prompt="..."      # any GPT-2 size
  ./launch.sh gpt_pydoc --config.init_from=DIR ...                      # fine-tuning from it

use them whatever the experiment file says (the log names each value the workdir fixes). Keys
may carry the `transformer.` prefix (GPT2LMHeadModel) or not (GPT2Model); the attention-mask
buffers (`attn.bias`, `attn.masked_bias`) are not weights and are skipped; the output layer
is tied to `wte`. GPT-2's Conv1D weights are stored (in, out), as gen's Dense kernels.
Nothing here downloads: get the files with `huggingface-cli download gpt2` (or gpt2-medium,
gpt2-large, gpt2-xl; the safetensors, config.json, vocab.json and merges.txt), or from
`git clone https://huggingface.co/gpt2`.

`to_gpt2` writes a gen GPT run's latest parameters the other way (config.json and
model.safetensors, plus vocab.json and merges.txt when its tokenizer is byte-level BPE), for
`GPT2LMHeadModel.from_pretrained(DIR)`.
"""
import json
import os
import re
import sys

import jax
import numpy as np
from absl import app, flags, logging

from gen import UsageError, cli

_FROM = flags.DEFINE_string("from", None, "gpt2: the Hugging Face GPT-2 checkpoint directory.")
_TO = flags.DEFINE_string("to", None, "to_gpt2: the directory to write.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The gen workdir to write (gpt2) or read (to_gpt2).")
_EXPERIMENT = flags.DEFINE_string("experiment", "gpt2_124m",
                                  "The experiment whose config the workdir is used with.")

_SKIPPED = re.compile(r"(^|\.)attn\.(masked_)?bias$")
_LAYER = re.compile(r"^h\.(\d+)\.(.+)$")
# Hugging Face name (after h.<i>.) -> gen's path in the block's params.
_BLOCK = {
    "ln_1.weight": ("ln_1", "scale"), "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("attn", "c_attn", "kernel"), "attn.c_attn.bias": ("attn", "c_attn", "bias"),
    "attn.c_proj.weight": ("attn", "c_proj", "kernel"), "attn.c_proj.bias": ("attn", "c_proj", "bias"),
    "ln_2.weight": ("ln_2", "scale"), "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("mlp", "c_fc", "kernel"), "mlp.c_fc.bias": ("mlp", "c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp", "c_proj", "kernel"), "mlp.c_proj.bias": ("mlp", "c_proj", "bias"),
}
_TOP = {"wte.weight": ("wte", "embedding"), "wpe.weight": ("wpe", "embedding"),
        "ln_f.weight": ("ln_f", "scale"), "ln_f.bias": ("ln_f", "bias")}


def _set_path(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get_path(tree, path) -> np.ndarray:
  for key in path:
    tree = tree[key]
  return np.asarray(tree, np.float32)


def from_gpt2(tensors: dict[str, np.ndarray]) -> dict:
  """gen.models.gpt's params from GPT-2's tensors (float32)."""
  params, unknown = {}, []
  tied = tensors.get("lm_head.weight")
  for name, value in tensors.items():
    key = name.removeprefix("transformer.")
    if _SKIPPED.search(key) or key == "lm_head.weight":
      continue
    layer = _LAYER.match(key)
    if key in _TOP:
      _set_path(params, _TOP[key], np.asarray(value, np.float32))
    elif layer and layer.group(2) in _BLOCK:
      _set_path(params, (f"h_{layer.group(1)}", *_BLOCK[layer.group(2)]),
                np.asarray(value, np.float32))
    else:
      unknown.append(name)
  if unknown:
    raise UsageError(f"The checkpoint has tensors that are not GPT-2's: {unknown[:10]}.")
  if "wte" not in params:
    raise UsageError("The checkpoint has no token embedding (wte.weight): is it a GPT-2?")
  if tied is not None and not np.array_equal(np.asarray(tied), params["wte"]["embedding"]):
    raise UsageError("The checkpoint's lm_head.weight differs from wte.weight; gen's GPT ties "
                     "its output layer to the token embedding, as GPT-2 does.")
  return params


def to_gpt2(params) -> dict[str, np.ndarray]:
  """GPT-2's tensors (GPT2LMHeadModel's names) of gen.models.gpt's params."""
  params = jax.device_get(params)
  tensors = {f"transformer.{name}": _get_path(params, path) for name, path in _TOP.items()}
  for i in range(sum(name.startswith("h_") for name in params)):
    tensors.update({f"transformer.h.{i}.{name}": _get_path(params[f"h_{i}"], path)
                    for name, path in _BLOCK.items()})
  return tensors


def read_checkpoint(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, tensors of model.safetensors) of a Hugging Face checkpoint directory."""
  from safetensors.numpy import load_file
  paths = {name: os.path.join(directory, name) for name in ("config.json", "model.safetensors")}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise UsageError(f"{directory} is not a Hugging Face GPT-2 checkpoint: it lacks {missing} "
                     f"(the files of `huggingface-cli download gpt2`; PyTorch .bin weights are "
                     f"not read).")
  with open(paths["config.json"]) as f:
    hf_config = json.load(f)
  return hf_config, load_file(paths["model.safetensors"])


def sizes(hf_config: dict) -> dict:
  """The config values a checkpoint fixes, from its config.json; UsageError for a GPT-2
  variant gen's model does not compute."""
  if hf_config.get("model_type", "gpt2") != "gpt2":
    raise UsageError(f"config.json says model_type={hf_config['model_type']!r}; this reads GPT-2.")
  activation = hf_config.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):
    raise UsageError(f"The checkpoint uses activation_function={activation!r}; gen's GPT uses "
                     f"GPT-2's tanh GELU (gelu_new).")
  n_embd = hf_config["n_embd"]
  if hf_config.get("n_inner") not in (None, 4 * n_embd):
    raise UsageError(f"The checkpoint's MLP is {hf_config['n_inner']} wide; gen's is 4·n_embd.")
  if abs(hf_config.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
    raise UsageError(f"The checkpoint's layer_norm_epsilon is {hf_config['layer_norm_epsilon']}; "
                     f"gen's GPT uses GPT-2's 1e-5.")
  return {"model.n_layer": hf_config["n_layer"], "model.n_head": hf_config["n_head"],
          "model.n_embd": n_embd, "model.block_size": hf_config["n_positions"],
          "model.vocab_size": hf_config["vocab_size"], "model.bias": True,
          "dataset.tokenizer.kind": "gpt2"}


def gpt2_config(config) -> dict:
  """A Hugging Face config.json for a gen GPT config."""
  m = config.model
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": m.n_layer,
          "n_head": m.n_head, "n_embd": m.n_embd, "n_positions": m.block_size,
          "n_ctx": m.block_size, "vocab_size": m.vocab_size, "activation_function": "gelu_new",
          "layer_norm_epsilon": 1e-5, "n_inner": None, "tie_word_embeddings": True}


def convert_gpt2(source: str, workdir: str, config, mesh=None) -> str:
  """Writes the GPT-2 checkpoint in `source` into `workdir` for `config`'s experiment; returns
  the checkpoint's path."""
  from gen import checkpoint, data, experiment as experiment_lib, tokenizers, train, writers
  hf_config, tensors = read_checkpoint(source)
  fixed = sizes(hf_config)
  params = from_gpt2(tensors)
  tokenizer = tokenizers.from_gpt2_files(source)
  if tokenizer.vocab_size > hf_config["vocab_size"]:
    raise UsageError(f"The tokenizer has {tokenizer.vocab_size} tokens and the model "
                     f"{hf_config['vocab_size']}.")
  train.prepare_workdir(workdir)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    if checkpointer.latest_step() is not None:
      raise UsageError(f"{workdir} already holds checkpoints: convert into a new --workdir.")
  writers.write_fixed_config(workdir, fixed, {
      "dataset.tokenizer.path": ("tokenizer.json", tokenizer.to_json().encode())})
  experiment = experiment_lib.build(config, mesh, workdir)
  state = experiment.init_state()
  expected = jax.tree.map(lambda x: (x.shape, x.dtype), jax.device_get(state.params["gpt"]))
  converted = jax.tree.map(lambda x: (x.shape, x.dtype), params)
  if expected != converted:
    raise UsageError(f"The checkpoint's tensors do not make the model its config.json "
                     f"describes (e.g. n_layer={hf_config['n_layer']}).")
  module = state.modules["gpt"]
  placed = jax.device_put(params, jax.tree.map(lambda x: x.sharding, module.params))
  state = state.replace(modules={"gpt": module.replace(params=placed)})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(experiment.config.to_json_best_effort(indent=2))
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    checkpointer.save(0, state, data.initial_position())
    checkpointer.wait()
    path = checkpointer.path(0)
  logging.info("Wrote GPT-2 (%d layers, %d wide, %d tokens of context, %s parameters) to %s.",
               hf_config["n_layer"], hf_config["n_embd"], hf_config["n_positions"],
               f"{sum(x.size for x in jax.tree.leaves(params)):,}", path)
  return path


def export_gpt2(workdir: str, destination: str, config, mesh=None) -> None:
  """Writes the latest parameters of the gen GPT run in `workdir` as a Hugging Face GPT-2."""
  from safetensors.numpy import save_file
  from gen import experiment as experiment_lib
  experiment = experiment_lib.build(config, mesh, workdir)
  if not experiment.config.model.bias:
    raise UsageError("GPT-2 has biases; this run's model has none (config.model.bias=False).")
  state = experiment_lib.restore_latest(experiment, workdir)
  os.makedirs(destination, exist_ok=True)
  save_file(to_gpt2(state.params["gpt"]), os.path.join(destination, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(destination, "config.json"), "w") as f:
    json.dump(gpt2_config(experiment.config), f, indent=2)
  tokenizer = experiment.dataset.tokenizer
  if tokenizer.kind == "bpe":
    tokenizer.tokenizer.model.save(destination)  # vocab.json and merges.txt.
  logging.info("Wrote step %d of %s to %s.", int(state.step), workdir, destination)


def main(argv):
  cli.quiet_library_logs()
  if len(argv) != 2 or argv[1] not in ("gpt2", "to_gpt2"):
    cli.fail("usage: python -m gen.convert gpt2 --from=DIR --workdir=DIR, or "
             "python -m gen.convert to_gpt2 --workdir=DIR --to=DIR")
  needed = {"gpt2": (_FROM, _WORKDIR), "to_gpt2": (_WORKDIR, _TO)}[argv[1]]
  missing = [f"--{flag.name}" for flag in needed if not flag.value]
  if missing:
    cli.fail(f"{argv[1]} needs {' and '.join(missing)}.")
  cli.set_xla_defaults()
  try:
    config = cli.load_config(_EXPERIMENT.value)
    if argv[1] == "gpt2":
      print(convert_gpt2(_FROM.value, _WORKDIR.value, config))
    else:
      export_gpt2(_WORKDIR.value, _TO.value, config)
  except UsageError as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
