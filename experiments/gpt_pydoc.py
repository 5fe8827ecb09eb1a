"""A character-level GPT on Python's help topics (gen.text's pydoc corpus), offline. Sized for
at most 15 minutes on 2 CPU cores and at most 1.65 bits/char on the validation split (zlib:
1.95): targets, not yet measured."""
import ml_collections

from gen.families import lm


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 32  # Global, over all devices: windows of block_size + 1 characters.
  config.num_steps = 3000
  config.log_every = 50
  config.sample_every = 500
  config.checkpoint_every = 1000
  config.eval_every = 500
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10  # Skipped non-finite steps in a row before the run stops.
  config.profile_steps = 0  # > 0: trace this many steps into <workdir>/plugins/profile/.
  config.init_from = ""  # A workdir (a run, or gen.convert's): start from its parameters.

  # One value for the model's context and the data's windows: set either, both follow.
  block_size = ml_collections.FieldReference(128)
  config.dataset = ml_collections.ConfigDict({
      "name": "pydoc", "split": "train", "block_size": block_size,
      "sha256": "",  # Recorded by the first run; another corpus then fails at once.
      "data_dir": None,  # tfds datasets: where they are prepared.
      # "char": the training split's characters; "bpe": byte-level BPE trained on it, of
      # vocab_size tokens; or a tokenizer file / GPT-2's vocab.json + merges.txt at `path`.
      "tokenizer": {"kind": "char", "vocab_size": 0, "path": ""},
  })
  config.model = ml_collections.ConfigDict({
      "name": "gpt",
      "dtype": "float32",  # "bfloat16" computes in bf16 (GPU/TPU); params stay float32.
      "vocab_size": 128,  # At least the tokenizer's (pydoc has about 100 characters).
      "block_size": block_size,
      "n_layer": 4,
      "n_head": 4,
      "n_embd": 192,
      "bias": False,
      "dropout": 0.0,
      "remat": False,  # Recompute activations in the backward pass (less memory, more time).
  })
  config.lm = lm.options(snapshot_prompts=("The \"for\" statement", "A list is"))
  config.optimizer = ml_collections.ConfigDict({"gpt": {
      "learning_rate": 2e-3, "min_learning_rate": 2e-4, "warmup_steps": 100,
      "decay_steps": 3000,  # 0: num_steps (which then moves with it).
      "b1": 0.9, "b2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0}})
  # The validation split's loss (every window), bits/char, perplexity; samples' diversity.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("likelihood", "diversity"), "split": "validation", "num_windows": 0,
      "num_samples": 16, "sample_tokens": 128, "temperature": 1.0,
      "best_metric": "bits_per_char"})
  return config
