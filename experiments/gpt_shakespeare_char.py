"""nanoGPT's shakespeare_char (config/train_shakespeare_char.py): a character-level GPT of 6
layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, 5,000 iterations, on tfds's
tiny_shakespeare. Evaluated on validation+test, the last 10% of the text, which is nanoGPT's
validation split (it reports a best validation loss of 1.4697 on one A100)."""
from gen import cli

# tests/test_experiments.py trains every experiment two steps at its own size: 6 layers at
# 384 wide take a minute there (compiling and a 400-token snapshot); the test keeps 2.
TEST_OVERRIDES = {"model.n_layer": 2, "lm.snapshot_tokens": 32}


def get_config():
  config = cli.load_config("gpt_pydoc")
  config.batch_size = 64
  config.num_steps = 5000
  config.log_every = 50
  config.sample_every = 500
  config.checkpoint_every = 1000
  config.eval_every = 250
  config.dataset.name = "tiny_shakespeare"
  config.model.vocab_size = 65  # The 65 characters of the play, as nanoGPT's.
  config.model.block_size = 256  # The windows follow.
  config.model.n_layer = 6
  config.model.n_head = 6
  config.model.n_embd = 384
  config.model.bias = False
  config.model.dropout = 0.2
  o = config.optimizer.gpt
  o.learning_rate, o.min_learning_rate, o.warmup_steps, o.decay_steps = 1e-3, 1e-4, 100, 5000
  o.b1, o.b2, o.weight_decay, o.grad_clip = 0.9, 0.99, 0.1, 1.0
  config.lm.snapshot_prompts = ("",)  # From a newline, as nanoGPT samples.
  config.lm.snapshot_tokens = 500
  config.eval.split = "validation+test"
  config.eval.best_metric = "loss"
  return config
