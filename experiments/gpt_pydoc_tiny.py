"""nanoGPT's CPU quick start (README: 4 layers, 4 heads, 128 wide, block 64, batch 12, no
dropout, 2,000 iterations, learning rate 1e-3 to 1e-4) on the pydoc corpus, for comparison
with nanoGPT and benchmarks/torch_reference.py's GPT, step for step. Its batch of 12 does not
split over 8 devices: use --config.batch_size=16 there."""
from gen import cli


def get_config():
  config = cli.load_config("gpt_pydoc")
  config.batch_size = 12
  config.num_steps = 2000
  config.log_every = 50
  config.sample_every = 500
  config.checkpoint_every = 1000
  config.eval_every = 500
  config.model.block_size = 64  # The windows follow.
  config.model.n_layer = 4
  config.model.n_head = 4
  config.model.n_embd = 128
  config.model.bias = False
  config.model.dropout = 0.0
  o = config.optimizer.gpt
  o.learning_rate, o.min_learning_rate, o.warmup_steps, o.decay_steps = 1e-3, 1e-4, 100, 2000
  o.b1, o.b2, o.weight_decay, o.grad_clip = 0.9, 0.99, 0.1, 1.0
  return config
