"""A GPT-2-style decoder (Radford et al. 2019, as nanoGPT writes it), with a key/value cache.

Token and learned position embeddings, `n_layer` pre-LayerNorm blocks of causal self-attention
(`jax.nn.dot_product_attention`, so that GPUs get the fused cuDNN kernel) and a GELU MLP, a
final LayerNorm, and the output layer tied to the token embedding. The parameters are named
as Hugging Face's GPT-2 names its weights (`wte`, `h_<i>.attn.c_attn`, `ln_f`, ...) and a
`Dense` kernel is stored (in, out) as GPT-2's Conv1D weights are, so gen.convert maps one onto
the other by name alone.

One module serves training and cached decoding (gen.decode):
  gpt(tokens [B, T], train) -> logits [B, T, V]
  gpt(tokens [B, P], cache=init_cache(...)) -> (logits, cache): the prompt in one pass, its
    keys and values written at positions 0..P-1
  gpt(tokens [B, 1], cache=cache, positions=[B]) -> (logits, cache): one token per row, at
    each row's own position, so prompts of different lengths decode in one batch.
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
  """x [B, T, C] -> [B, T, C]; with a cache, also the cache with this call's keys and values."""
  num_heads: int
  use_bias: bool
  dtype: Any
  residual_std: float
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, cache=None, positions=None):
    batch, length, width = x.shape
    heads, head_width = self.num_heads, width // self.num_heads
    # GPT-2's c_attn output is [q | k | v], each split into heads as [heads, head_width].
    qkv = _dense(3 * width, self.use_bias, self.dtype, _INIT_STD, "c_attn")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(batch, length, 3, heads, head_width), 2, 0)
    if cache is None:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    elif positions is None:  # Prefill: the prompt attends causally to itself.
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                                 (0, 0, 0, 0)),
               "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                                 (0, 0, 0, 0))}
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    else:  # One token per row, at the row's position; it sees the cache up to there.
      write = jax.vmap(lambda c, new, p: jax.lax.dynamic_update_slice(c, new, (p, 0, 0)))
      cache = {"k": write(cache["k"], k.astype(cache["k"].dtype), positions),
               "v": write(cache["v"], v.astype(cache["v"].dtype), positions)}
      # Cached entries beyond a row's position are stale or empty: the lengths mask them.
      y = jax.nn.dot_product_attention(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype),
                                       key_value_seq_lengths=positions + 1)
    y = _dense(width, self.use_bias, self.dtype, self.residual_std, "c_proj")(
        y.reshape(batch, length, width))
    y = Dropout(self.dropout_rate, deterministic=self.deterministic)(y)
    return y if cache is None else (y, cache)


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
  def __call__(self, x, cache=None, positions=None):
    options = dict(use_bias=self.use_bias, dtype=self.dtype, residual_std=self.residual_std,
                   dropout_rate=self.dropout_rate, deterministic=self.deterministic)
    attention = CausalSelfAttention(self.num_heads, name="attn", **options)
    h = _layer_norm(self.use_bias, self.dtype, "ln_1")(x)
    if cache is None:
      x = x + attention(h)
    else:
      h, cache = attention(h, cache, positions)
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
  def __call__(self, tokens, train: bool = False, cache=None, positions=None):
    if positions is None:
      positions_ = jnp.arange(tokens.shape[1])[None]
    else:
      positions_ = positions[:, None]
    init = nn.initializers.normal(_INIT_STD)
    wte = nn.Embed(self.vocab_size, self.n_embd, embedding_init=init, dtype=self.dtype,
                   name="wte")
    wpe = nn.Embed(self.block_size, self.n_embd, embedding_init=init, dtype=self.dtype,
                   name="wpe")
    x = Dropout(self.dropout_rate, deterministic=not train)(wte(tokens) + wpe(positions_))
    block = nn.remat(Block) if self.remat and cache is None else Block
    # GPT-2 scales the residual projections' init by 1/sqrt(2·n_layer): two per block.
    residual_std = _INIT_STD / math.sqrt(2 * self.n_layer)
    new_cache = []
    for i in range(self.n_layer):
      layer = block(self.n_head, self.use_bias, self.dtype, residual_std, self.dropout_rate,
                    deterministic=not train, name=f"h_{i}")
      if cache is None:
        x = layer(x)
      else:
        x, layer_cache = layer(x, cache[i], positions)
        new_cache.append(layer_cache)
    x = _layer_norm(self.use_bias, self.dtype, "ln_f")(x)
    logits = wte.attend(x).astype(jnp.float32)
    return logits if cache is None else (logits, new_cache)

  def init_cache(self, batch: int, length: int) -> list[dict[str, jax.Array]]:
    """Empty keys and values for `batch` rows of up to `length` positions, per layer."""
    shape = (batch, length, self.n_head, self.n_embd // self.n_head)
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
