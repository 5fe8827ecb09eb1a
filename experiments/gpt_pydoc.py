"""A character-level GPT on Python's help topics (gen.text's pydoc corpus), offline: 2,400 steps
of 32 windows of 128 characters, in about 13 minutes on 2 CPU cores. Targets: at most 1.65
bits/char on the validation split in at most 15 minutes (zlib: 1.95).

Measured with `python -m gen.results --experiments=gpt_pydoc --seeds=1` (README). Chosen by
runs with gen.results (docs/results.json): without dropout the model overfits the 420 KB
training split (train loss 0.65 nats at the end; validation 1.81 bits/char, worse than its 1.78
at step 1,000); dropout 0.2 at a peak of 3e-3 over 1,600 steps gave 1.666 bits/char. Those
runs shared the machine (15.4 min for 1,600 steps); an idle Zen 5 runs the step in 0.29 s, so
the steps went up: 2,600 (tag steps2600) reached 1.610 in 13.6 min, and 2,400 leaves a margin
under 15 minutes for slower CPUs.
"""
import ml_collections

from gen.families import lm


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 32  # Global, over all devices: windows of block_size + 1 characters.
  config.num_steps = 2400
  config.log_every = 50
  config.sample_every = 800
  config.checkpoint_every = 800
  config.eval_every = 800
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
      "dropout": 0.2,
      "remat": False,  # Recompute activations in the backward pass (less memory, more time).
  })
  config.lm = lm.options(snapshot_prompts=("The \"for\" statement", "A list is"))
  config.optimizer = ml_collections.ConfigDict({"gpt": {
      "learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_steps": 100,
      "decay_steps": 0,  # 0: num_steps (which then moves with it).
      "b1": 0.9, "b2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0}})
  # The validation split's loss (every window), bits/char, perplexity; samples' diversity.
  config.eval = ml_collections.ConfigDict({
      "metrics": ("likelihood", "diversity"), "split": "validation", "num_windows": 0,
      "num_samples": 16, "sample_tokens": 128, "temperature": 1.0,
      "best_metric": "bits_per_char"})
  return config
