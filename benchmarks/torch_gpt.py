"""A PyTorch eager GPT with nanoGPT's architecture and optimizer, at the sizes of one of gen's GPT
experiments: to time its train step beside gen's, and to train it on the same corpus and split.

  python benchmarks/torch_gpt.py gpt_pydoc_tiny [--batch_size=B] [--steps=30] [--json]
  python benchmarks/torch_gpt.py gpt_pydoc_tiny --train [--seed=S] [--json]  # num_steps on
                                                                 # pydoc, then the validation loss

The model is nanoGPT's model.py (token and position embeddings, pre-LayerNorm blocks with
`F.scaled_dot_product_attention(is_causal=True)`, GELU MLP, tied output, bias optional, GPT-2's
initialisation with the residual projections scaled by 1/sqrt(2·n_layer)); GELU is the tanh
approximation, as gen's and GPT-2's. The optimizer is nanoGPT's: AdamW (decay on tensors of 2
or more dimensions), its warm-up and cosine learning rate, gradient clipping by global norm.
`--train` draws batches of random windows of the training split (NumPy, seeded), and
evaluates on gen's validation windows (gen.families.lm.validation_windows), so its loss is in
the units of gen's `likelihood` group.
"""
import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
  def __init__(self, width, bias):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(width))
    self.bias = nn.Parameter(torch.zeros(width)) if bias else None

  def forward(self, x):
    return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
  def __init__(self, n_embd, n_head, bias, dropout):
    super().__init__()
    self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
    self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
    self.n_head, self.dropout = n_head, dropout
    self.resid_dropout = nn.Dropout(dropout)

  def forward(self, x):
    b, t, c = x.shape
    q, k, v = self.c_attn(x).split(c, dim=2)
    heads = lambda y: y.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True,
                                       dropout_p=self.dropout if self.training else 0.0)
    return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
  def __init__(self, n_embd, bias, dropout):
    super().__init__()
    self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
    self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
  def __init__(self, n_embd, n_head, bias, dropout):
    super().__init__()
    self.ln_1, self.ln_2 = LayerNorm(n_embd, bias), LayerNorm(n_embd, bias)
    self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout)
    self.mlp = MLP(n_embd, bias, dropout)

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
  def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, bias, dropout):
    super().__init__()
    self.wte = nn.Embedding(vocab_size, n_embd)
    self.wpe = nn.Embedding(block_size, n_embd)
    self.drop = nn.Dropout(dropout)
    self.h = nn.ModuleList([Block(n_embd, n_head, bias, dropout) for _ in range(n_layer)])
    self.ln_f = LayerNorm(n_embd, bias)
    self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
    self.lm_head.weight = self.wte.weight  # Tied.
    self.apply(self._init)
    for name, p in self.named_parameters():
      if name.endswith("c_proj.weight"):
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

  @staticmethod
  def _init(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
      nn.init.zeros_(module.bias)

  def forward(self, tokens, targets):
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.drop(self.wte(tokens) + self.wpe(positions))
    for block in self.h:
      x = block(x)
    logits = self.lm_head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def nanogpt_lr(it, peak, floor, warmup, decay):
  if it < warmup:
    return peak * (it + 1) / (warmup + 1)
  if it > decay:
    return floor
  ratio = (it - warmup) / max(decay - warmup, 1)
  return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


def build(config):
  """(model, optimizer, lr(it)) at the sizes and optimizer settings of a gen GPT config."""
  m, o = config.model, config.optimizer.gpt
  model = GPT(m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.bias, m.dropout)
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8)
  decay = o.decay_steps or config.num_steps
  return model, optimizer, lambda it: nanogpt_lr(it, o.learning_rate, o.min_learning_rate,
                                                 o.warmup_steps, decay)


def make_step(model, optimizer, schedule, grad_clip, accumulation_steps=1):
  state = {"it": 0}

  def step(tokens):
    for group in optimizer.param_groups:
      group["lr"] = schedule(state["it"])
    total = 0.0
    for micro in tokens.chunk(accumulation_steps):
      loss = model(micro[:, :-1], micro[:, 1:]) / accumulation_steps
      loss.backward()
      total += float(loss.detach())
    if grad_clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["it"] += 1
    return total

  return step


def time_train_step(config, batch_size, steps, warmup):
  torch.manual_seed(0)
  model, optimizer, schedule = build(config)
  model.train()
  step = make_step(model, optimizer, schedule, config.optimizer.gpt.grad_clip,
                   config.lm.accumulation_steps)
  window = config.model.block_size + 1
  tokens = torch.randint(0, config.model.vocab_size, (batch_size, window))
  for _ in range(warmup):
    step(tokens)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step(tokens)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"tokens_per_sec": batch_size * config.model.block_size / step_s,
          "step_ms": 1e3 * step_s, "torch": torch.__version__, "threads": torch.get_num_threads(),
          "parameters": sum(p.numel() for p in model.parameters())}


def train(config, batch_size):
  """Trains config.num_steps on the config's pydoc split; the validation loss over gen's windows."""
  from gen import data
  from gen.families import lm
  torch.manual_seed(config.seed)
  model, optimizer, schedule = build(config)
  step = make_step(model, optimizer, schedule, config.optimizer.gpt.grad_clip,
                   config.lm.accumulation_steps)
  train_split = data.load(config.dataset, "train")
  validation = data.load(config.dataset, config.eval.split)
  rng = np.random.default_rng(config.seed)
  start = time.perf_counter()
  model.train()
  losses = []
  for _ in range(config.num_steps):
    offsets = rng.integers(0, train_split.num_examples, batch_size)
    losses.append(step(torch.from_numpy(train_split.read(offsets)["tokens"]).long()))
  seconds = time.perf_counter() - start
  model.eval()
  windows = validation.read(lm.validation_windows(len(validation.tokens), config.model.block_size,
                                                  config.eval.num_windows))["tokens"]
  with torch.no_grad():
    total = sum(float(model(w[:, :-1], w[:, 1:])) * len(w)
                for w in torch.from_numpy(windows).long().split(64))
  loss = total / len(windows)
  return {"validation_loss": loss, "bits_per_char": loss / math.log(2),
          "final_train_loss": float(np.mean(losses[-50:])), "train_seconds": seconds,
          "steps": config.num_steps, "torch": torch.__version__}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("experiment", help="a GPT experiment of gen (experiments/<name>.py)")
  parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--train", action="store_true", help="train num_steps, report val loss")
  parser.add_argument("--num_steps", type=int, default=None, help="--train: default the config's")
  parser.add_argument("--seed", type=int, default=None, help="--train: default the config's")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  from gen import cli
  config = cli.load_config(args.experiment)
  if args.num_steps:
    config.num_steps = args.num_steps
  if args.seed is not None:
    config.seed = args.seed
  batch_size = args.batch_size or config.batch_size
  if args.train:
    result = train(config, batch_size)
  else:
    result = time_train_step(config, batch_size, args.steps, args.warmup)
  result = {"experiment": args.experiment, "batch_size": batch_size, **result}
  if args.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
