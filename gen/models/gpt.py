"""A GPT-2-style decoder (Radford et al. 2019, as nanoGPT writes it), with a key/value cache.

Token and learned position embeddings, `n_layer` pre-LayerNorm blocks of causal self-attention
(`jax.nn.dot_product_attention`, so that GPUs get the fused cuDNN kernel) and a GELU MLP, a
final LayerNorm, and the output layer tied to the token embedding. The parameters are named
as Hugging Face's GPT-2 names its weights (`wte`, `h_<i>.attn.c_attn`, `ln_f`, ...) and a
`Dense` kernel is stored (in, out) as GPT-2's Conv1D weights are, so gen.convert maps one onto
the other by name alone.

One module serves training and cached decoding (gen.decode):
  gpt(tokens [B, T], train) -> logits [B, T, V]
  gpt(tokens [B, T], cache=cache, index=i, offsets=[B]) -> (logits, cache): tokens written
    into cache slots i..i+T-1, attending to the slots before. Row b's text starts at slot
    offsets[b]: prompts of different lengths are left-padded to one length P (offsets =
    P - lengths), their padding slots are masked out and positions count from each row's
    first token, so every row computes what it would alone. The prompt goes in one call
    (index 0), then one token per call at slot P, P+1, ...: all rows write the same slot,
    which XLA updates in place.
Logits are float32 whatever the compute dtype.

Dropout (`model.dropout`) is applied to the embeddings and to each block's two residual
branches, as nanoGPT does; not to the attention probabilities, which the fused attention
kernel does not draw.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen import UsageError, checks
from gen.models.layers import Dropout

_INIT_STD = 0.02  # GPT-2's initialisation.
LAYER_NORM_EPSILON = 1e-5  # GPT-2's (flax's default is 1e-6).


def _dense(features: int, use_bias: bool, dtype, std: float, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros)


def _layer_norm(use_bias: bool, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_bias=use_bias, dtype=dtype, name=name)


class CausalSelfAttention(nn.Module):
  """x [B·T, C] of `batch` rows -> [B·T, C]; with a cache, also the cache with this call's keys
  and values. (Activations are kept 2-D: XLA:CPU's matmuls and their gradients run about twice
  as fast on [B·T, C] as on [B, T, C].)"""
  num_heads: int
  use_bias: bool
  dtype: Any
  residual_std: float
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, batch: int, cache=None, index=0, offsets=None):
    width = x.shape[-1]
    length = x.shape[0] // batch
    heads, head_width = self.num_heads, width // self.num_heads
    # GPT-2's c_attn output is [q | k | v], each split into heads as [heads, head_width].
    qkv = _dense(3 * width, self.use_bias, self.dtype, _INIT_STD, "c_attn")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(batch, length, 3, heads, head_width), 2, 0)
    if cache is None:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    else:
      # The cache is [B, heads, slots, head_width], the layout of the two matmuls below, so
      # that no step copies it (dot_product_attention's [B, slots, heads, head_width] made
      # XLA:CPU transpose the whole cache at every token).
      start = (0, 0, index, 0)
      to_cache = lambda x, c: jnp.swapaxes(x, 1, 2).astype(c.dtype)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], to_cache(k, cache["k"]), start),
               "v": jax.lax.dynamic_update_slice(cache["v"], to_cache(v, cache["v"]), start)}
      scores = jnp.einsum("btnh,bnsh->bnts", q, cache["k"].astype(q.dtype),
                          preferred_element_type=jnp.float32) / math.sqrt(head_width)
      mask = cache_mask(index, length, cache["k"].shape[2], offsets)
      probabilities = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), -1)
      y = jnp.einsum("bnts,bnsh->btnh", probabilities.astype(q.dtype),
                     cache["v"].astype(q.dtype))
    y = _dense(width, self.use_bias, self.dtype, self.residual_std, "c_proj")(
        y.reshape(batch * length, width))
    y = Dropout(self.dropout_rate, deterministic=self.deterministic)(y)
    return y if cache is None else (y, cache)


def cache_mask(index, length: int, cache_length: int, offsets) -> jax.Array:
  """[B, 1, length, cache_length] bool: query slot index + t sees the slots from its row's
  offset up to itself. A padding slot (before the offset) sees itself only, so that no row of
  the attention is empty."""
  queries = (index + jnp.arange(length))[None, :, None]
  keys = jnp.arange(cache_length)[None, None, :]
  mask = ((keys <= queries) & (keys >= offsets[:, None, None])) | (keys == queries)
  return mask[:, None]


class MLP(nn.Module):
  use_bias: bool
  dtype: Any
  residual_std: float
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    # The tanh approximation is GPT-2's "gelu_new", so converted checkpoints give its logits.
    h = nn.gelu(_dense(4 * width, self.use_bias, self.dtype, _INIT_STD, "c_fc")(x),
                approximate=True)
    h = _dense(width, self.use_bias, self.dtype, self.residual_std, "c_proj")(h)
    return Dropout(self.dropout_rate, deterministic=self.deterministic)(h)


class Block(nn.Module):
  """Pre-LayerNorm: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""
  num_heads: int
  use_bias: bool
  dtype: Any
  residual_std: float
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, batch: int, cache=None, index=0, offsets=None):
    options = dict(use_bias=self.use_bias, dtype=self.dtype, residual_std=self.residual_std,
                   dropout_rate=self.dropout_rate, deterministic=self.deterministic)
    attention = CausalSelfAttention(self.num_heads, name="attn", **options)
    h = _layer_norm(self.use_bias, self.dtype, "ln_1")(x)
    if cache is None:
      x = x + attention(h, batch)
    else:
      h, cache = attention(h, batch, cache, index, offsets)
      x = x + h
    x = x + MLP(name="mlp", **options)(_layer_norm(self.use_bias, self.dtype, "ln_2")(x))
    return x if cache is None else (x, cache)


class GPT(nn.Module):
  """tokens [B, T] int32 -> logits [B, T, vocab_size] float32 (see the module docstring)."""
  vocab_size: int
  block_size: int
  n_layer: int
  n_head: int
  n_embd: int
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.

  @nn.compact
  def __call__(self, tokens, train: bool = False, cache=None, index=0, offsets=None):
    positions = jnp.arange(tokens.shape[1])[None]
    if cache is not None:
      offsets = jnp.zeros(tokens.shape[:1], jnp.int32) if offsets is None else offsets
      positions = jnp.maximum(index + positions - offsets[:, None], 0)
    init = nn.initializers.normal(_INIT_STD)
    wte = nn.Embed(self.vocab_size, self.n_embd, embedding_init=init, dtype=self.dtype,
                   name="wte")
    wpe = nn.Embed(self.block_size, self.n_embd, embedding_init=init, dtype=self.dtype,
                   name="wpe")
    batch, length = tokens.shape
    x = Dropout(self.dropout_rate, deterministic=not train)(wte(tokens) + wpe(positions))
    x = x.reshape(batch * length, self.n_embd)
    block = nn.remat(Block, static_argnums=(2,)) if self.remat and cache is None else Block
    # GPT-2 scales the residual projections' init by 1/sqrt(2·n_layer): two per block.
    residual_std = _INIT_STD / math.sqrt(2 * self.n_layer)
    new_cache = []
    for i in range(self.n_layer):
      layer = block(self.n_head, self.use_bias, self.dtype, residual_std, self.dropout_rate,
                    deterministic=not train, name=f"h_{i}")
      if cache is None:
        x = layer(x, batch)
      else:
        x, layer_cache = layer(x, batch, cache[i], index, offsets)
        new_cache.append(layer_cache)
    x = _layer_norm(self.use_bias, self.dtype, "ln_f")(x)
    logits = wte.attend(x).astype(jnp.float32).reshape(batch, length, self.vocab_size)
    return logits if cache is None else (logits, new_cache)

  def init_cache(self, batch: int, length: int) -> list[dict[str, jax.Array]]:
    """Empty keys and values [batch, n_head, length, head width] per layer."""
    shape = (batch, self.n_head, length, self.n_embd // self.n_head)
    return [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
            for _ in range(self.n_layer)]


FAMILY = "lm"


def build(model_config, shape) -> dict:
  """{"gpt"}: `n_layer` blocks of `n_head` heads over `n_embd` features, a context of
  `block_size` tokens and `vocab_size` token embeddings; `shape` is the dataset's example
  shape, [block_size + 1] tokens (a window and its next token)."""
  for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
    checks.at_least(model_config[key], f"model.{key}", 1)
  if model_config.n_embd % model_config.n_head:
    raise UsageError(f"config.model.n_embd={model_config.n_embd} must divide by "
                     f"config.model.n_head={model_config.n_head} (the heads split the width).")
  dropout = checks.in_range(model_config.dropout, "model.dropout", 0.0, 1.0, high_open=True)
  if tuple(shape) != (model_config.block_size + 1,):
    raise UsageError(f"The dataset's examples are windows of {tuple(shape)} tokens, and "
                     f"config.model.block_size={model_config.block_size} needs "
                     f"{model_config.block_size + 1}: set config.dataset.block_size to "
                     f"config.model.block_size.")
  return {"gpt": GPT(model_config.vocab_size, model_config.block_size, model_config.n_layer,
                     model_config.n_head, model_config.n_embd, use_bias=bool(model_config.bias),
                     dropout_rate=dropout, dtype=jnp.dtype(model_config.dtype),
                     remat=bool(model_config.get("remat", False)))}
