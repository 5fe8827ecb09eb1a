"""Autoregressive decoding with a key/value cache, compiled as one program.

`make_generate(model, ...)` returns `generate(variables, prompts, lengths, key, temperature,
top_p, row_ids)`: the prompts [B, P] (left-padded: row b's `lengths[b]` tokens are its last)
are run through the model in one pass that fills the cache, then a `lax.while_loop` draws one
token per row per iteration, so prompts of different lengths share the batch and every row's
tokens are those it would get alone (gen.models.gpt masks the padding). Rows stop at the end-of-text
token, where the tokenizer has one (the rest of the row is filled with it), and the loop
ends when every row has stopped.

Sampling: logits / temperature (0: greedy), then the `top_k` largest (0: all; 1: greedy),
then the smallest set whose probability reaches `top_p` (nucleus sampling, Holtzman et al.
2020; 1: all). Row r's token i is drawn with `fold_in(fold_in(key, row_ids[r]), i)`, so a
row's tokens do not depend on the batch it is in, nor on the devices.
"""
import math

import jax
import jax.numpy as jnp

from gen import UsageError, checks


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
  """UsageError for a temperature, top_k or top_p that cannot work, naming the limit."""
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
      math.isfinite(temperature) and temperature >= 0):
    raise UsageError(f"--temperature={temperature} must be a finite number of at least 0 (0 "
                     f"and --top_k=1 are greedy decoding; 1 samples the model's distribution).")
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
    raise UsageError(f"--top_k={top_k} must be an integer of at least 0 (0 keeps every token, "
                     f"1 is greedy).")
  if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
    raise UsageError(f"--top_p={top_p} must be in (0, 1] (1 keeps every token).")


def filter_logits(logits, top_k: int, top_p, use_top_p: bool):
  """logits [B, V] with the tokens outside the top k and outside the nucleus at -inf."""
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if use_top_p:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probabilities = jax.nn.softmax(ordered, axis=-1)
    # A token is kept while the mass of the tokens before it is below top_p: at least one.
    before = jnp.cumsum(probabilities, axis=-1) - probabilities
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def sample_tokens(logits, keys, temperature, top_k: int = 0, top_p=1.0, use_top_p=False):
  """One token per row [B] int32 from logits [B, V], with keys [B]."""
  logits = filter_logits(logits.astype(jnp.float32), top_k, top_p, use_top_p)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  drawn = jax.vmap(jax.random.categorical)(keys, scaled)
  return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def make_generate(model, max_new_tokens: int, top_k: int = 0, use_top_p: bool = False,
                  eot_id: int | None = None, return_logits: bool = False):
  """generate(variables, prompts [B, P] int32 (left-padded), lengths [B] int32, key,
  temperature, top_p, row_ids [B] int32) -> {"tokens": [B, max_new_tokens] int32} (and
  "logits" [B, max_new_tokens, V], each new token's distribution before filtering, with
  `return_logits`).

  `model` is a gen.models.gpt.GPT; every row's last position, lengths + max_new_tokens - 1,
  must be below its block size (the caller checks). Static: the sizes, top_k, whether top_p
  filters, the end-of-text token.
  """
  checks.at_least(max_new_tokens, "max_new_tokens", 1)

  def generate(variables, prompts, lengths, key, temperature, top_p, row_ids):
    batch, prompt_length = prompts.shape
    offsets = prompt_length - lengths
    cache = model.init_cache(batch, prompt_length + max_new_tokens)
    logits, cache = model.apply(variables, prompts, cache=cache, offsets=offsets)
    last = logits[:, -1]
    tokens = jnp.zeros((batch, max_new_tokens), jnp.int32)
    kept = (jnp.zeros((batch, max_new_tokens, last.shape[-1]), jnp.float32) if return_logits
            else jnp.zeros((), jnp.float32))
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(row_ids)

    def body(carry):
      i, last, cache, tokens, done, kept = carry
      keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
      token = sample_tokens(last, keys, temperature, top_k, top_p, use_top_p)
      if eot_id is not None:
        token = jnp.where(done, eot_id, token)
        done = done | (token == eot_id)
      tokens = tokens.at[:, i].set(token)
      if return_logits:
        kept = kept.at[:, i].set(last)
      logits, cache = model.apply(variables, token[:, None], cache=cache,
                                  index=prompt_length + i, offsets=offsets)
      return i + 1, logits[:, 0], cache, tokens, done, kept

    def cond(carry):
      i, done = carry[0], carry[4]
      return (i < max_new_tokens) & ~jnp.all(done)

    done = jnp.zeros((batch,), bool)
    *_, tokens, done, kept = jax.lax.while_loop(cond, body, (0, last, cache, tokens, done, kept))
    if eot_id is not None:  # Rows that all stopped early: the rest of each row is end-of-text.
      stopped = jnp.arange(max_new_tokens)[None] >= jnp.argmax(tokens == eot_id, axis=1)[:, None]
      tokens = jnp.where(done[:, None] & stopped, eot_id, tokens)
    return {"tokens": tokens, **({"logits": kept} if return_logits else {})}

  return generate


def check_lengths(longest_prompt: int, max_new_tokens: int, block_size: int) -> None:
  if longest_prompt + max_new_tokens > block_size:
    raise UsageError(
        f"The prompt of {longest_prompt} tokens plus --max_new_tokens={max_new_tokens} is "
        f"{longest_prompt + max_new_tokens} tokens, more than the model's context "
        f"(config.model.block_size={block_size}): shorten the prompt or set --max_new_tokens="
        f"{max(block_size - longest_prompt, 0)} or less.")
