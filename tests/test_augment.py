"""DiffAugment against NumPy references of the reference implementation's transforms."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen import augment, sharding

KEY = jax.random.key(0)


def _images(batch=8, height=16, width=20, channels=3, low=-1.0, high=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(low, high, (batch, height, width, channels)).astype(np.float32)


def _translate_reference(x, shift_h, shift_w):
  """out[b, i, j] = x[b, i - shift_h[b], j - shift_w[b]], zero outside: pad, then slice."""
  _, height, width, _ = x.shape
  pad = max(height, width, *np.abs(shift_h), *np.abs(shift_w))
  out = np.empty_like(x)
  for b, (sh, sw) in enumerate(zip(shift_h, shift_w)):
    padded = np.pad(x[b], ((pad, pad), (pad, pad), (0, 0)))
    out[b] = padded[pad - sh:pad - sh + height, pad - sw:pad - sw + width]
  return out


def _erase_reference(x, top, left, height, width):
  out = x.copy()
  for b, (t, l) in enumerate(zip(top, left)):
    out[b, max(t, 0):max(t + height, 0), max(l, 0):max(l + width, 0)] = 0
  return out


POLICY_CASES = ["", "color", "translation", "cutout", "color,translation", "translation,cutout",
                "color,translation,cutout", ("color", "cutout")]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_keeps_shape_and_dtype(dtype):
  x = jnp.asarray(_images(batch=4), dtype)
  for policy in POLICY_CASES:
    y = augment.diff_augment(x, KEY, policy)
    assert y.shape == x.shape and y.dtype == x.dtype, policy
    assert np.all(np.isfinite(np.asarray(y, np.float32))), policy


def test_empty_policy_is_identity():
  x = jnp.asarray(_images(batch=2))
  for policy in ["", (), [], ",", " "]:
    y = augment.diff_augment(x, KEY, policy)
    assert y is x, policy


def test_unknown_policy_raises_naming_known_ones():
  x = jnp.asarray(_images(batch=2))
  for policy in ["colour", "color,flip", ("translation", "zoom")]:
    with pytest.raises(ValueError, match="color, translation, cutout"):
      augment.diff_augment(x, KEY, policy)


def test_policy_applies_color_translation_cutout_in_that_order():
  x = jnp.asarray(_images(batch=4))
  color_key, translation_key, cutout_key = jax.random.split(KEY, 3)
  expected = augment.cutout(augment.translation(augment.color(x, color_key), translation_key),
                            cutout_key)
  for policy in ["cutout,translation,color", "color, translation, cutout",
                 ("translation", "cutout", "color")]:
    np.testing.assert_array_equal(augment.diff_augment(x, KEY, policy), expected)
  # Each transform keeps its key whatever else is named.
  np.testing.assert_array_equal(augment.diff_augment(x, KEY, "translation"),
                                augment.translation(x, translation_key))


def test_translate_matches_numpy():
  x = _images(batch=9, height=6, width=7)
  shift_h = np.array([0, 1, -1, 3, -5, 6, -6, 2, 0])
  shift_w = np.array([0, -2, 1, 7, -7, 0, 3, -3, 8])
  np.testing.assert_array_equal(augment.translate(x, shift_h, shift_w),
                                _translate_reference(x, shift_h, shift_w))


def test_translation_shifts_cover_the_reference_range():
  # H·0.125 = 2 and W·0.125 = 2.5, which the reference rounds up to 3.
  x = np.arange(1, 64 * 16 * 20 * 2 + 1, dtype=np.float32).reshape(64, 16, 20, 2)
  y = np.asarray(augment.translation(jnp.asarray(x), KEY))
  shifts = []
  for b in range(len(x)):
    found = [(sh, sw) for sh, sw in itertools.product(range(-2, 3), range(-3, 4))
             if np.array_equal(y[b], _translate_reference(x[b:b + 1], [sh], [sw])[0])]
    assert len(found) == 1, (b, found)  # Every value of x is distinct: shifts are identifiable.
    shifts.append(found[0])
  shift_h, shift_w = zip(*shifts)
  assert set(shift_h) == set(range(-2, 3))
  assert set(shift_w) == set(range(-3, 4))


def test_translation_of_constant_keeps_it_inside_and_zero_in_border():
  x = jnp.full((16, 16, 16, 3), 0.7, jnp.float32)
  y = np.asarray(augment.translation(x, KEY, ratio=0.25))  # Shifts up to 4.
  assert set(np.unique(y)) <= {0.0, np.float32(0.7)}
  for b in range(len(y)):
    inside = y[b, :, :, 0] != 0
    assert np.all(y[b] == y[b, :, :, :1])
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    # The constant fills one rectangle that touches one border per axis; the rest is zero.
    assert inside.sum() == len(rows) * len(cols) and np.all(inside[np.ix_(rows, cols)])
    assert len(rows) >= 12 and len(cols) >= 12
    assert (rows[0] == 0 or rows[-1] == 15) and (cols[0] == 0 or cols[-1] == 15)
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)


def test_erase_matches_numpy():
  x = _images(batch=6, height=8, width=10)
  top, left = np.array([0, -3, 5, 7, -1, 2]), np.array([0, 4, -2, 8, 9, -4])
  np.testing.assert_array_equal(augment.erase(x, top, left, 4, 5),
                                _erase_reference(x, top, left, 4, 5))


@pytest.mark.parametrize("height, width", [(16, 20), (14, 14)])
def test_cutout_zeroes_one_clipped_rectangle(height, width):
  # Values in [0.1, 1): the only zeros are cut out.
  x = _images(batch=128, height=height, width=width, low=0.1, high=1.0)
  y = np.asarray(augment.cutout(jnp.asarray(x), KEY))
  sizes = (int(height * 0.5 + 0.5), int(width * 0.5 + 0.5))
  tops, lefts = [], []
  for b in range(len(x)):
    zero = y[b, :, :, 0] == 0
    np.testing.assert_array_equal(y[b] == 0, np.repeat(zero[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(y[b][~zero], x[b][~zero])
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols) and np.all(zero[np.ix_(rows, cols)])
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    for first, visible, size, extent, starts in [(rows[0], len(rows), sizes[0], height, tops),
                                                 (cols[0], len(cols), sizes[1], width, lefts)]:
      # The reference's centres [0, extent - size % 2] clip the square to at least half.
      assert size - size // 2 <= visible <= size
      if visible < size:
        assert first == 0 or first + visible == extent
      starts.append(first - (size - visible) if first == 0 else first)
  for starts, size, extent in [(tops, sizes[0], height), (lefts, sizes[1], width)]:
    assert min(starts) == -(size // 2)
    assert max(starts) == extent - size % 2 - size // 2


def test_color_adjustments_match_numpy():
  x = _images(batch=4)
  factors = np.array([0.0, 0.3, 1.0, 1.9], np.float32)
  delta = np.array([-0.5, -0.1, 0.2, 0.49], np.float32)
  f = factors[:, None, None, None]
  channel_mean = x.mean(3, keepdims=True)
  image_mean = x.mean((1, 2, 3), keepdims=True)
  np.testing.assert_allclose(augment.adjust_brightness(x, delta), x + delta[:, None, None, None],
                             rtol=1e-6)
  np.testing.assert_allclose(augment.adjust_saturation(x, factors),
                             (x - channel_mean) * f + channel_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(x, factors),
                             (x - image_mean) * f + image_mean, rtol=1e-5, atol=1e-6)


def test_color_factors_lie_in_the_reference_ranges():
  # Brightness b, saturation s, contrast c make y = c·s·(x - x̄_c) + c·(x̄_c - x̄) + x̄ + b,
  # with x̄_c the mean over channels and x̄ over the image: recover them by least squares.
  x = _images(batch=64, height=8, width=8).astype(np.float64)
  y = np.asarray(augment.color(jnp.asarray(x, jnp.float32), KEY), np.float64)
  recovered = []
  for b in range(len(x)):
    channel_mean = x[b].mean(2, keepdims=True)
    image_mean = x[b].mean()
    design = np.stack([(x[b] - channel_mean).ravel(),
                       np.broadcast_to(channel_mean - image_mean, x[b].shape).ravel(),
                       np.ones(x[b].size)], axis=1)
    (cs, c, offset), *_ = np.linalg.lstsq(design, y[b].ravel(), rcond=None)
    np.testing.assert_allclose(design @ [cs, c, offset], y[b].ravel(), atol=1e-5)
    recovered.append((offset - image_mean, cs / c, c))
  brightness, saturation, contrast = np.array(recovered).T
  for values, low, high in [(brightness, -0.5, 0.5), (saturation, 0.0, 2.0), (contrast, 0.5, 1.5)]:
    assert np.all((values >= low - 1e-5) & (values <= high + 1e-5))
    assert values.max() - values.min() > 0.8 * (high - low)  # Drawn per example, spread out.


def test_gradients_flow_through_every_transform():
  x = jnp.asarray(_images(batch=4))
  grad = jax.grad(lambda x: augment.diff_augment(x, KEY, augment.POLICIES).sum())(x)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # d sum(translate(x)) / dx is 1 exactly where an input pixel stays inside the image.
  shift_h, shift_w = np.array([0, 2, -3, 1]), np.array([1, -2, 0, 5])
  grad = jax.grad(lambda x: augment.translate(x, shift_h, shift_w).sum())(x)
  np.testing.assert_array_equal(grad, augment.translate(jnp.ones_like(x), -shift_h, -shift_w))


def test_jit_is_deterministic_and_matches_a_sharded_batch():
  x = jnp.asarray(_images(batch=16))
  policy = "color,translation,cutout"
  augmented = jax.jit(augment.diff_augment, static_argnums=2)
  first = augmented(x, KEY, policy)
  np.testing.assert_array_equal(first, augmented(x, KEY, policy))
  assert not np.array_equal(first, augmented(x, jax.random.key(1), policy))
  np.testing.assert_allclose(first, augment.diff_augment(x, KEY, policy), atol=1e-6)
  batch_sharding = sharding.batch_sharding(sharding.make_mesh())  # 8 CPU devices.
  sharded = augmented(jax.device_put(x, batch_sharding), KEY, policy)
  assert sharded.sharding.is_equivalent_to(batch_sharding, x.ndim)
  np.testing.assert_allclose(sharded, first, atol=1e-6)


def test_examples_get_different_augmentations():
  x = jnp.asarray(np.repeat(_images(batch=1), 16, axis=0))
  for policy in augment.POLICIES:
    y = np.asarray(augment.diff_augment(x, KEY, policy)).reshape(16, -1)
    distinct = len(np.unique(y, axis=0))
    assert distinct >= (16 if policy == "color" else 8), (policy, distinct)
