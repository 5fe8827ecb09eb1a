"""GPT-2 small (124M parameters: 12 layers, 12 heads, 768 wide, context 1,024) with byte-level
BPE of 50,257 tokens, on tfds's lm1b, with nanoGPT's GPT-2 optimizer (learning rate 6e-4 to
6e-5, warm-up 2,000, β2 0.95, batch of about 0.5M tokens by accumulation). For GPT-2's own
weights, `python -m gen.convert gpt2 --from=DIR --workdir=DIR` writes a workdir that
`--mode=sample` reads and `--config.init_from=DIR` fine-tunes, whatever its size."""
from gen import cli

# tests/test_experiments.py trains every experiment two steps at its own size: GPT-2's steps
# take minutes each on a CPU, so the test shrinks what these keys name (the code is the same).
TEST_OVERRIDES = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 64,
                  "model.block_size": 32, "lm.accumulation_steps": 1}


def get_config():
  config = cli.load_config("gpt_pydoc")
  config.batch_size = 512  # Windows of 1,025 tokens: 0.5M tokens a step.
  config.num_steps = 600_000
  config.log_every = 10
  config.sample_every = 2000
  config.checkpoint_every = 1000
  config.eval_every = 2000
  config.dataset.name = "lm1b"
  # Trained on the training split; or GPT-2's own: --config.dataset.tokenizer.path=DIR.
  config.dataset.tokenizer.kind = "bpe"
  config.dataset.tokenizer.vocab_size = 50_257
  config.model.vocab_size = 50_257
  config.model.block_size = 1024  # The windows follow.
  config.model.n_layer = 12
  config.model.n_head = 12
  config.model.n_embd = 768
  config.model.bias = True
  config.model.dropout = 0.0
  o = config.optimizer.gpt
  o.learning_rate, o.min_learning_rate, o.warmup_steps, o.decay_steps = 6e-4, 6e-5, 2000, 600_000
  o.b1, o.b2, o.weight_decay, o.grad_clip = 0.9, 0.95, 0.1, 1.0
  config.lm.accumulation_steps = 32  # Micro-batches of 16 windows.
  config.lm.snapshot_prompts = ("", "The meaning of life is")
  config.lm.snapshot_tokens = 100
  config.eval.split = "test"
  config.eval.num_windows = 1024
  config.eval.best_metric = "loss"
  return config
