"""The language-model family: next-token prediction on windows of text (gen.text), with AdamW,
a warm-up and cosine schedule, gradient clipping and accumulation in the one compiled step;
text snapshots, likelihood and diversity evaluation, and cached sampling (gen.decode).

`config.lm` (see `options`) holds the family's own settings; the optimizer is
`config.optimizer.<module>`: learning_rate (the peak), min_learning_rate (the floor),
warmup_steps, decay_steps (0: num_steps), b1, b2, weight_decay, grad_clip (0: off).
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen import UsageError, checks, decode, sharding
from gen.families import (EvalGroup, ModuleState, TrainState, init_variables, median_range,
                          options_block)


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.lm`, with the given values changed; every key is in every LM config, so any can
  be set from the command line (`--config.lm.accumulation_steps=4`)."""
  return options_block("LM", {
      # Micro-batches per step: the gradient of config.batch_size windows is accumulated over
      # this many slices of it, inside the step (the same update, less memory).
      "accumulation_steps": 1,
      # Continuations of these prompts are the run's snapshots (samples/step_<n>.txt); an
      # empty prompt starts from <|endoftext|>, or a newline for a tokenizer without it.
      "snapshot_prompts": ("",),
      "snapshot_tokens": 200,  # New tokens per snapshot (at most the context left).
      "snapshot_temperature": 0.8,
  }, overrides)


def validate(config):
  lm = config.lm
  steps = checks.at_least(lm.accumulation_steps, "lm.accumulation_steps", 1)
  if config.batch_size % steps:
    raise UsageError(f"config.batch_size={config.batch_size} must divide by "
                     f"config.lm.accumulation_steps={steps} (each micro-batch is an equal "
                     f"share of the batch).")
  checks.at_least(lm.snapshot_tokens, "lm.snapshot_tokens", 1)
  checks.in_range(lm.snapshot_temperature, "lm.snapshot_temperature", 0.0, float("inf"))
  if not lm.snapshot_prompts:
    raise UsageError("config.lm.snapshot_prompts is empty: give at least one prompt ('' starts "
                     "from nothing).")
  evaluation = config.eval
  if "likelihood" in evaluation.metrics:
    checks.at_least(evaluation.num_windows, "eval.num_windows", 0)
  if "diversity" in evaluation.metrics:
    checks.at_least(evaluation.num_samples, "eval.num_samples", 2)
    checks.at_least(evaluation.sample_tokens, "eval.sample_tokens", 1)
    checks.in_range(evaluation.temperature, "eval.temperature", 0.0, float("inf"))


def tokenizer_of(dataset):
  """The dataset's tokenizer; UsageError for a dataset that is not text."""
  tokenizer = getattr(dataset, "tokenizer", None)
  if tokenizer is None:
    raise UsageError(f"The language-model family trains on text datasets (gen.text: pydoc, "
                     f"tiny_shakespeare, lm1b); config.dataset.name={dataset.name!r} is not one.")
  return tokenizer


def batch_spec(config, dataset) -> dict:
  """Windows "tokens" [block_size + 1] int32: the inputs and, shifted by one, the targets."""
  tokenizer = tokenizer_of(dataset)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise UsageError(f"The tokenizer has {tokenizer.vocab_size} tokens, more than "
                     f"config.model.vocab_size={config.model.vocab_size}: set it to at least "
                     f"{tokenizer.vocab_size} (a multiple of 64 computes fastest).")
  return {"tokens": dataset.spec["tokens"]}


def throughput_unit(config):
  return "tokens", config.model.block_size


# --- Optimizer ---

def learning_rate_schedule(config):
  """nanoGPT's: linear warm-up to the peak over warmup_steps (update t at peak·(t+1)/(warmup+1)),
  then a cosine from the peak to min_learning_rate at decay_steps, and the floor after."""
  options_ = config.optimizer.gpt
  peak, floor, warmup = options_.learning_rate, options_.min_learning_rate, options_.warmup_steps
  decay = options_.decay_steps or config.num_steps

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    warm = peak * (count + 1) / (warmup + 1)
    progress = jnp.clip((count - warmup) / max(decay - warmup, 1), 0.0, 1.0)
    cosine = floor + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (peak - floor)
    return jnp.where(count < warmup, warm, cosine)

  return schedule


def make_optimizers(config, names):
  """AdamW per module with `learning_rate_schedule`, weight decay on matrices and embeddings
  only (not biases or LayerNorm scales), after clipping the gradient's global norm."""
  optimizers = {}
  for name in names:
    if name not in config.optimizer:
      raise UsageError(f"config.optimizer has no entry for the model's module {name!r}.")
    o = config.optimizer[name]
    checks.positive(o.learning_rate, f"optimizer.{name}.learning_rate")
    checks.in_range(o.min_learning_rate, f"optimizer.{name}.min_learning_rate", 0.0,
                    o.learning_rate)
    checks.at_least(o.warmup_steps, f"optimizer.{name}.warmup_steps", 0)
    checks.at_least(o.decay_steps, f"optimizer.{name}.decay_steps", 0)
    for beta in ("b1", "b2"):
      checks.in_range(o[beta], f"optimizer.{name}.{beta}", 0.0, 1.0, high_open=True)
    checks.in_range(o.weight_decay, f"optimizer.{name}.weight_decay", 0.0, float("inf"))
    checks.in_range(o.grad_clip, f"optimizer.{name}.grad_clip", 0.0, float("inf"))
    optimizers[name] = optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip else optax.identity(),
        optax.scale_by_adam(o.b1, o.b2, eps=1e-8),
        optax.add_decayed_weights(o.weight_decay, mask=lambda p: jax.tree.map(
            lambda x: x.ndim >= 2, p)),
        optax.scale_by_learning_rate(learning_rate_schedule(config)))
  return optimizers


# --- State and step ---

def init_state(models, optimizers, config, spec, key) -> TrainState:
  init_key, rng = jax.random.split(key)
  window = spec["tokens"].shape[0]
  params, _ = init_variables(models["gpt"], init_key, jnp.zeros((1, window - 1), jnp.int32))
  return TrainState.create(rng, {"gpt": ModuleState.create(params, optimizers["gpt"])})


def cross_entropy(logits, targets) -> jax.Array:
  """Mean next-token cross-entropy in nats: logits [..., V], targets [...] int."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_loss(models, config):
  """loss(params, tokens [B, T+1], rng, train) -> mean cross-entropy of tokens[:, 1:] given
  the tokens before each."""
  gpt = models["gpt"]

  def loss(params, tokens, rng=None, train=True):
    logits = gpt.apply({"params": params}, tokens[:, :-1], train=train,
                       rngs={"dropout": rng} if train else {})
    return cross_entropy(logits, tokens[:, 1:])

  return loss


def make_train_step(models, optimizers, config):
  loss_fn = make_loss(models, config)
  grad_fn = jax.value_and_grad(loss_fn)
  steps = config.lm.accumulation_steps
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch, rng):
    """batch {"tokens" [B, T+1] int32} -> (state, {loss (nats/token), grad_norm (before
    clipping), learning_rate (of this update)})."""
    module = state.modules["gpt"]
    tokens = batch["tokens"]
    if steps == 1:
      loss, grads = grad_fn(module.params, tokens, rng)
    else:
      # Micro-batch a holds rows a, a + A, a + 2A, ...: every device keeps a share of each,
      # so the slices need no communication.
      micro = tokens.reshape(-1, steps, tokens.shape[-1]).swapaxes(0, 1)

      def accumulate(total, inputs):
        i, micro_tokens = inputs
        value = grad_fn(module.params, micro_tokens, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, total, value), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, module.params))
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(steps), micro))
      loss, grads = jax.tree.map(lambda x: x / steps, total)
    learning_rate = schedule(module.opt_state[-1].count)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": learning_rate}
    return state.next(gpt=module.apply_gradients(optimizers["gpt"], grads)), metrics

  return train_step


# --- Prompts, decoding and text ---

def encode_prompt(tokenizer, text: str) -> np.ndarray:
  """A prompt's token ids; an empty prompt is <|endoftext|>, or a newline without one."""
  if text:
    return tokenizer.encode(text)
  if tokenizer.eot_id is not None:
    return np.asarray([tokenizer.eot_id], np.int32)
  return tokenizer.encode("\n")


def prompt_batch(tokenizer, prompts) -> dict[str, np.ndarray]:
  """{"prompts" [N, P] int32 (left-padded with 0, as gen.decode takes them), "lengths" [N]}."""
  encoded = [encode_prompt(tokenizer, p) for p in prompts]
  longest = max(len(e) for e in encoded)
  padded = np.zeros((len(encoded), longest), np.int32)
  for row, ids in enumerate(encoded):
    padded[row, longest - len(ids):] = ids
  return {"prompts": padded, "lengths": np.asarray([len(e) for e in encoded], np.int32)}


def continuation(tokenizer, tokens) -> str:
  """The text of new tokens, up to an end-of-text token."""
  tokens = np.asarray(tokens)
  if tokenizer.eot_id is not None and (tokens == tokenizer.eot_id).any():
    tokens = tokens[:np.argmax(tokens == tokenizer.eot_id)]
  return tokenizer.decode(tokens)


def _generate_fn(models, max_new_tokens, top_k=0, use_top_p=False, eot_id=None):
  generate = decode.make_generate(models["gpt"], max_new_tokens, top_k, use_top_p, eot_id)

  def generate_from_state(state, prompts, lengths, key, temperature, top_p, row_ids):
    return generate({"params": state.modules["gpt"].params}, prompts, lengths, key,
                    temperature, top_p, row_ids)["tokens"]

  return generate_from_state


def snapshot_batch(config, dataset) -> dict[str, np.ndarray]:
  return prompt_batch(tokenizer_of(dataset), config.lm.snapshot_prompts)


def make_snapshots(models, config):
  """snapshots(state, prompt batch, key) -> {"samples": new tokens [N, M]}: continuations of
  config.lm.snapshot_prompts, from the same key at every call."""
  eot_id = None  # Not known without the tokenizer: rows run to the end, cut when rendered.
  lm = config.lm

  def snapshots(state, batch, key):
    room = config.model.block_size - batch["prompts"].shape[1]
    generate = _generate_fn(models, max(1, min(lm.snapshot_tokens, room)), eot_id=eot_id)
    rows = jnp.arange(batch["prompts"].shape[0], dtype=jnp.int32)
    return {"samples": generate(state, batch["prompts"], batch["lengths"], key,
                                lm.snapshot_temperature, 1.0, rows)}

  return snapshots


def format_samples(prompts: list[str], continuations: list[str]) -> str:
  """Samples as Markdown (the .txt, TensorBoard's text tab and summary.md show it): each
  prompt and its continuation in a fenced block."""
  blocks = [f"Sample {i + 1}:\n\n~~~~\n{p}{c}\n~~~~" for i, (p, c) in
            enumerate(zip(prompts, continuations))]
  return "\n\n".join(blocks) + "\n"


def snapshot_renderer(config, dataset):
  tokenizer = tokenizer_of(dataset)
  prompts = list(config.lm.snapshot_prompts)

  def render(outputs, batch):
    texts = [continuation(tokenizer, row) for row in np.asarray(outputs["samples"])]
    return {"samples": format_samples(prompts, texts)}

  return render


# --- Sampling (--mode=sample) ---

sample_flags = {
    "prompt": ("string", None, "--mode=sample, text models: the prompt to continue (default: "
                               "none, i.e. <|endoftext|> or a newline)."),
    "prompt_file": ("string", None, "--mode=sample, text models: a file of prompts, one per "
                                    "line (\\n in a line stands for a newline), used in turn."),
    "max_new_tokens": ("integer", None, "--mode=sample, text models: tokens to add to each "
                                        "prompt (default: 256, or the context left)."),
    "temperature": ("float", 1.0, "--mode=sample, text models: divides the logits; 0 is greedy."),
    "top_k": ("integer", 0, "--mode=sample, text models: sample among the k likeliest tokens "
                            "(0: all; 1: greedy)."),
    "top_p": ("float", 1.0, "--mode=sample, text models: sample among the likeliest tokens "
                            "whose probability reaches p, in (0, 1] (1: all)."),
}


def read_prompts(prompt=None, prompt_file=None) -> list[str]:
  if prompt is not None and prompt_file is not None:
    raise UsageError("Give --prompt or --prompt_file, not both.")
  if prompt_file is None:
    return [prompt or ""]
  try:
    with open(prompt_file) as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UsageError(f"--prompt_file={prompt_file} cannot be read: {e.strerror or e}.") from e
  prompts = [line.replace("\\n", "\n") for line in lines if line]
  if not prompts:
    raise UsageError(f"--prompt_file={prompt_file} has no prompt (one per line).")
  return prompts


def _row_batches(num_rows: int, batch_size: int):
  for start in range(0, num_rows, batch_size):
    yield start, min(batch_size, num_rows - start)


def make_text_sampler(experiment, prompts: list[str], num_samples: int, max_new_tokens=None,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """sampler(state, key) -> (prompts [num_samples], continuations [num_samples]): sample i
  continues prompts[i mod len(prompts)]. Bad values fail here, before anything compiles."""
  config, mesh = experiment.config, experiment.mesh
  tokenizer = tokenizer_of(experiment.dataset)
  decode.check_sampling(temperature, top_k, top_p)
  batch = prompt_batch(tokenizer, prompts)
  longest = batch["prompts"].shape[1]
  if max_new_tokens is None:
    max_new_tokens = max(1, min(256, config.model.block_size - longest))
  checks.at_least(max_new_tokens, "max_new_tokens (--max_new_tokens)", 1)
  decode.check_lengths(longest, max_new_tokens, config.model.block_size)
  top_k = min(top_k, config.model.vocab_size)
  # Batches of rows of the config's batch size at most, a multiple of the device count.
  devices = mesh.devices.size
  rows = -(-min(num_samples, config.batch_size) // devices) * devices
  generate = experiment.jit(
      _generate_fn(experiment.models, max_new_tokens, top_k, top_p < 1, tokenizer.eot_id),
      out_shardings=sharding.batch_sharding(mesh))
  batched = sharding.batch_sharding(mesh)
  which = np.arange(num_samples) % len(prompts)

  def sampler(state, key):
    continuations = []
    for start, count in _row_batches(num_samples, rows):
      ids = np.arange(start, start + rows, dtype=np.int32)
      chosen = which[np.minimum(ids, num_samples - 1)]
      inputs = [batch["prompts"][chosen], batch["lengths"][chosen], ids]
      inputs = [jax.device_put(x, batched) for x in inputs]
      tokens = sharding.to_host(generate(state, inputs[0], inputs[1], key, float(temperature),
                                         float(top_p), inputs[2]))
      continuations += [continuation(tokenizer, row) for row in tokens[:count]]
    return [prompts[i] for i in which], continuations

  return sampler


def make_sampler(experiment, num_samples: int, prompt=None, prompt_file=None,
                 max_new_tokens=None, temperature=1.0, top_k=0, top_p=1.0):
  """--mode=sample: the continuations as text (printed and written to --output)."""
  sampler = make_text_sampler(experiment, read_prompts(prompt, prompt_file), num_samples,
                              max_new_tokens, temperature, top_k, top_p)
  return lambda state, key: format_samples(*sampler(state, key))


# --- Evaluation ---

def validation_windows(num_tokens: int, block_size: int, limit: int = 0) -> np.ndarray:
  """Start offsets of consecutive windows of block_size + 1 tokens that overlap by one, so
  every token after the first is predicted once; `limit` > 0 keeps that many, evenly spaced."""
  starts = np.arange(0, num_tokens - block_size, block_size)
  if limit and limit < len(starts):
    starts = starts[np.linspace(0, len(starts) - 1, limit).round().astype(np.int64)]
  return starts


def _likelihood(context):
  """Mean cross-entropy of the evaluation split's windows (nats per token), bits per token and
  per character, and perplexity."""
  experiment, split = context.experiment, context.split
  config, mesh = experiment.config, experiment.mesh
  starts = validation_windows(len(split.tokens), config.model.block_size,
                              config.eval.num_windows)
  windows = split.read(starts)["tokens"]
  gpt = experiment.models["gpt"]
  devices = mesh.devices.size
  batch_size = -(-config.batch_size // devices) * devices

  @experiment.jit
  def summed_loss(state, tokens, weights):
    logits = gpt.apply({"params": state.modules["gpt"].params}, tokens[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(losses.mean(axis=-1) * weights)

  # Characters per token of the split: 1 for a character-level tokenizer.
  chars_per_token = split.num_chars / len(split.tokens)

  def likelihood(state):
    total = 0.0
    batched = sharding.batch_sharding(mesh)
    for chunk in range(0, len(windows), batch_size):
      tokens = windows[chunk:chunk + batch_size]
      weights = np.ones(batch_size, np.float32)
      weights[len(tokens):] = 0.0
      tokens = np.concatenate([tokens, np.repeat(tokens[-1:], batch_size - len(tokens), 0)])
      total += float(summed_loss(state, jax.device_put(tokens, batched),
                                 jax.device_put(weights, batched)))
    loss = total / len(windows)
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_char": loss / math.log(2) / chars_per_token}

  return likelihood


def distinct_n(texts: list[str], n: int) -> float:
  """Distinct n-grams of words over all n-grams of words in `texts` (Li et al. 2016)."""
  grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
           for i in range(len(words) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str]) -> float:
  """Mean BLEU (sacrebleu, 0-100) of each text against all the others (Zhu et al. 2018):
  high when the samples repeat one another."""
  import sacrebleu
  scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score
            for i, t in enumerate(texts)]
  return float(np.mean(scores))


def _diversity(context):
  """distinct-1, distinct-2 and self-BLEU of config.eval.num_samples continuations of the
  snapshot prompts, at config.eval.temperature, from the same key at every evaluation."""
  experiment = context.experiment
  config = experiment.config
  tokenizer = tokenizer_of(experiment.dataset)
  longest = prompt_batch(tokenizer, config.lm.snapshot_prompts)["prompts"].shape[1]
  sampler = make_text_sampler(
      experiment, list(config.lm.snapshot_prompts), config.eval.num_samples,
      min(config.eval.sample_tokens, config.model.block_size - longest), config.eval.temperature)

  def diversity(state):
    _, texts = sampler(state, jax.random.fold_in(jax.random.key(config.seed), 2))
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "self_bleu": self_bleu(texts)}

  return diversity


eval_groups = {
    "likelihood": EvalGroup(_likelihood, summary=lambda v: (
        f"validation {median_range(v['bits_per_char'], 3)} bits/char (perplexity "
        f"{median_range(v['perplexity'], 2)})" if "bits_per_char" in v else "")),
    "diversity": EvalGroup(_diversity, higher_is_better=frozenset({"distinct_1", "distinct_2"})),
}


# --- Benchmark ---

def nanogpt_flops_per_token(config, params) -> float:
  """6N + 12·L·H·Q·T (PaLM's appendix B, as nanoGPT's MFU counts it): N the parameters
  without the position embeddings, L layers, H heads of width Q, T the context."""
  m = config.model
  n = sum(x.size for x in jax.tree.leaves(params)) - params["wpe"]["embedding"].size
  return 6 * n + 12 * m.n_layer * m.n_head * (m.n_embd // m.n_head) * m.block_size


def benchmark(experiment, state, step_seconds: float, peak_flops_per_sec: float) -> dict:
  """nanoGPT's FLOPs per token and MFU of the step; decoding speed with the cache."""
  import time
  config = experiment.config
  params = jax.device_get(state.modules["gpt"].params)
  per_token = nanogpt_flops_per_token(config, params)
  tokens_per_sec = experiment.step_batch_size * config.model.block_size / step_seconds
  results = {"nanogpt_flops_per_token": per_token,
             "nanogpt_mfu": per_token * tokens_per_sec / peak_flops_per_sec}
  new_tokens = min(256, config.model.block_size - 1)
  for batch in (1, 8):
    rows = -(-batch // experiment.mesh.devices.size) * experiment.mesh.devices.size
    generate = jax.jit(_generate_fn(experiment.models, new_tokens))
    inputs = (jnp.zeros((rows, 1), jnp.int32), jnp.ones((rows,), jnp.int32), jax.random.key(0),
              1.0, 1.0, jnp.arange(rows, dtype=jnp.int32))
    start = time.perf_counter()
    generate(state, *inputs).block_until_ready()
    results[f"decode_compile_s_batch_{batch}"] = time.perf_counter() - start
    times = []
    for _ in range(3):
      start = time.perf_counter()
      generate(state, *inputs).block_until_ready()
      times.append(time.perf_counter() - start)
    results[f"decode_tokens_per_sec_batch_{batch}"] = rows * new_tokens / float(np.median(times))
  return results
