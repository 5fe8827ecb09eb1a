"""DiffAugment: differentiable augmentation for data-efficient GAN training.

Zhao, Liu, Lin, Zhu and Han, "Differentiable Augmentation for Data-Efficient GAN Training"
(NeurIPS 2020, arXiv:2006.10738). The discriminator sees real and generated images through
the same random, differentiable transforms, so it cannot overfit a small data set and the
generator still gets gradients through them. The transforms follow the reference
implementation (github.com/mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py), for
NHWC batches with values in [-1, 1], as pure functions of (x, key) that keep x's dtype.

Every random parameter is drawn per example with shapes fixed by x's static shape, and
translation and cutout are a batched gather and a mask, so the transforms trace under
`jax.jit` with a sharded batch (no host sync, no data-dependent shapes). The `adjust_*`,
`translate` and `erase` functions apply given parameters; the transforms only sample them.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def _per_example(values: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1], to broadcast one value per example over an NHWC batch."""
  return jnp.asarray(values)[:, None, None, None]


def _round(size: int, ratio: float) -> int:
  """round(size · ratio) with halves rounded up, as the reference's int(size · ratio + 0.5)."""
  return int(size * ratio + 0.5)


def adjust_brightness(x: jax.Array, delta: jax.Array) -> jax.Array:
  """x + delta, for per-example delta [B]."""
  return x + _per_example(delta).astype(x.dtype)


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each pixel's deviation from its mean over channels by a per-example factor [B]."""
  mean = x.mean(axis=3, keepdims=True)
  return (x - mean) * _per_example(factor).astype(x.dtype) + mean


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each example's deviation from its mean over H, W, C by a per-example factor [B]."""
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _per_example(factor).astype(x.dtype) + mean


def color(x: jax.Array, key: jax.Array) -> jax.Array:
  """Random brightness (+U(-0.5, 0.5)), saturation (×U(0, 2)), contrast (×U(0.5, 1.5)).

  Each factor is drawn per example; the three are applied in that order, as the reference.
  """
  batch = x.shape[0]
  brightness_key, saturation_key, contrast_key = jax.random.split(key, 3)
  # The means are reductions: in bfloat16 they would lose most of their digits.
  y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  y = adjust_brightness(y, jax.random.uniform(brightness_key, (batch,), minval=-0.5, maxval=0.5))
  y = adjust_saturation(y, jax.random.uniform(saturation_key, (batch,), minval=0.0, maxval=2.0))
  y = adjust_contrast(y, jax.random.uniform(contrast_key, (batch,), minval=0.5, maxval=1.5))
  return y.astype(x.dtype)


def _shift_axis(x: jax.Array, shift: jax.Array, axis: int) -> jax.Array:
  """x moved by shift[b] positions along `axis` (1 or 2) per example, zero filled."""
  size = x.shape[axis]
  source = jnp.arange(size) - shift[:, None]  # [B, size]: where each output position reads.
  inside = (source >= 0) & (source < size)
  index_shape = [x.shape[0], 1, 1, 1]
  index_shape[axis] = size
  # One batched gather of whole rows (or columns); clipped indices keep it in bounds, and
  # the mask zeroes what the reference reads from its zero padding.
  moved = jnp.take_along_axis(x, jnp.clip(source, 0, size - 1).reshape(index_shape), axis=axis)
  return jnp.where(inside.reshape(index_shape), moved, jnp.zeros((), x.dtype))


def translate(x: jax.Array, shift_h: jax.Array, shift_w: jax.Array) -> jax.Array:
  """x [B, H, W, C] with example b moved down by shift_h[b] and right by shift_w[b] pixels.

  out[b, i, j] = x[b, i - shift_h[b], j - shift_w[b]], and 0 where that falls outside x
  (the reference pads with zeros, the middle of [-1, 1]). Shifts are integers [B].
  """
  shift_h, shift_w = jnp.asarray(shift_h, jnp.int32), jnp.asarray(shift_w, jnp.int32)
  return _shift_axis(_shift_axis(x, shift_h, axis=1), shift_w, axis=2)


def translation(x: jax.Array, key: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Random per-example integer shifts in [-round(H·ratio), round(H·ratio)] (and W), zero filled.

  The reference reads x[i + t] where this moves by +t; the shifts are symmetric, so the two
  have the same distribution.
  """
  batch, height, width, _ = x.shape
  max_h, max_w = _round(height, ratio), _round(width, ratio)
  key_h, key_w = jax.random.split(key)
  shift_h = jax.random.randint(key_h, (batch,), -max_h, max_h + 1)
  shift_w = jax.random.randint(key_w, (batch,), -max_w, max_w + 1)
  return translate(x, shift_h, shift_w)


def erase(x: jax.Array, top: jax.Array, left: jax.Array, height: int, width: int) -> jax.Array:
  """x times a mask that is 0 on rows [top, top + height) × columns [left, left + width).

  top and left are per-example integers [B] and may put part of the rectangle outside the
  image, which clips it; height and width are static.
  """
  rows = jnp.arange(x.shape[1])
  cols = jnp.arange(x.shape[2])
  top, left = jnp.asarray(top)[:, None], jnp.asarray(left)[:, None]
  in_rows = (rows >= top) & (rows < top + height)  # [B, H]
  in_cols = (cols >= left) & (cols < left + width)  # [B, W]
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
  # Multiplicative like the reference, so the erased pixels pass zero gradient.
  return x * keep[..., None].astype(x.dtype)


def cutout(x: jax.Array, key: jax.Array, ratio: float = 0.5) -> jax.Array:
  """Zeroes a round(H·ratio) × round(W·ratio) rectangle at a random place per example.

  As the reference, the rectangle's centre is drawn from [0, H - size_h % 2] (and W), so it
  is clipped where it crosses the border but always covers some pixels.
  """
  batch, height, width, _ = x.shape
  size_h, size_w = _round(height, ratio), _round(width, ratio)
  key_h, key_w = jax.random.split(key)
  centre_h = jax.random.randint(key_h, (batch,), 0, height + 1 - size_h % 2)
  centre_w = jax.random.randint(key_w, (batch,), 0, width + 1 - size_w % 2)
  return erase(x, centre_h - size_h // 2, centre_w - size_w // 2, size_h, size_w)


_TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def _parse(policy: str | Sequence[str]) -> set[str]:
  names = policy.split(",") if isinstance(policy, str) else policy
  names = {name.strip() for name in names} - {""}
  unknown = names - set(POLICIES)
  if unknown:
    raise ValueError(f"Unknown DiffAugment policy {sorted(unknown)}; known: {', '.join(POLICIES)}.")
  return names


def diff_augment(x: jax.Array, key: jax.Array, policy: str | Sequence[str]) -> jax.Array:
  """DiffAugment of a batch x [B, H, W, C]: the named transforms, in the order color,
  translation, cutout, each with its own random parameters per example; differentiable in x.

  An empty policy ("" or ()) returns x unchanged. A comma-separated string
  "color,translation" is accepted. Unknown names raise ValueError naming the known ones.
  The order of the names does not matter, and each transform uses the same key whatever
  else the policy names.
  """
  names = _parse(policy)
  if not names:
    return x
  keys = jax.random.split(key, len(POLICIES))
  for name, transform_key in zip(POLICIES, keys):
    if name in names:
      x = _TRANSFORMS[name](x, transform_key)
  return x
