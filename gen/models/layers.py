"""Layers shared by gen's models.

Every model builds its transposed convolutions through `ConvTranspose` here. XLA:CPU runs
the weight gradient of a strided `lax.conv_transpose` about 10x slower than its forward
pass (it convolves a zero-dilated input); this layer computes the same function as
`flax.linen.ConvTranspose` (same parameters, same outputs) as one stride-1 convolution
followed by a depth-to-space shuffle (sub-pixel convolution), whose forward pass and both
gradients are ordinary convolutions: on a 2-core CPU the DCGAN-28 layer's weight gradient
drops from about 1.7 s to 60 ms, and its forward pass from 140 to 30 ms.

Every convolution (including the one inside `ConvTranspose`) goes through `_conv`, which
computes it as one matrix product of the input's shifted views where XLA:CPU's convolution
kernels are slow: small images (8x8 digits: `dcgan_digits`'s step from 45 to 13 ms on a
2-core AVX2 CPU) and 1-channel inputs (`dcgan_mnist`'s step 10% faster).
"""
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _same_padding_before(kernel: int, stride: int) -> int:
  """The low-side padding `lax.conv_transpose` uses for padding="SAME"."""
  pad_len = kernel + stride - 2
  return kernel - 1 if stride > kernel - 1 else int(np.ceil(pad_len / 2))


def subpixel_taps(kernel: int, stride: int) -> tuple[np.ndarray, int]:
  """How a transposed convolution's taps map onto one stride-1 convolution, along one axis.

  Output position `stride·q + r` of the transposed convolution reads input `q + d` through
  tap `t = stride·d + pad - r`, for every `d` that lands inside the kernel. Returns
  `taps` [stride, D] (tap index for phase r and window offset j, or `kernel` where the
  phase has no tap) and `d_min`, the window's first offset.
  """
  pad = _same_padding_before(kernel, stride)
  offsets = [(r + t - pad) // stride for r in range(stride) for t in range(kernel)
             if (r + t - pad) % stride == 0]
  d_min, d_max = min(offsets), max(offsets)
  taps = np.full((stride, d_max - d_min + 1), kernel, np.int32)
  for r in range(stride):
    for j, d in enumerate(range(d_min, d_max + 1)):
      t = stride * d + pad - r
      if 0 <= t < kernel:
        taps[r, j] = t
  return taps, d_min


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """`lax.conv_transpose(x, kernel, strides, "SAME")` for NHWC x and HWIO kernel, 2D.

  x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, H·sh, W·sw, Cout].
  """
  (kh, kw, cin, cout), (sh, sw) = kernel.shape, strides
  taps_h, dh_min = subpixel_taps(kh, sh)
  taps_w, dw_min = subpixel_taps(kw, sw)
  # A zero tap at index k stands for "no tap" in a phase's window.
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  window = padded[taps_h[:, :, None, None], taps_w[None, None, :, :]]  # [sh, Dh, sw, Dw, Cin, Cout]
  dh, dw = taps_h.shape[1], taps_w.shape[1]
  window = window.transpose(1, 3, 4, 0, 2, 5).reshape(dh, dw, cin, sh * sw * cout)
  y = _conv(x, window, (1, 1), ((-dh_min, dh - 1 + dh_min), (-dw_min, dw - 1 + dw_min)))
  b, h, w, _ = y.shape
  return y.reshape(b, h, w, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * sh, w * sw, cout)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of a "SAME" convolution, as XLA computes it."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _patch_conv(x, kernel, strides, padding):
  """The convolution as one matrix product: x's kh·kw shifted (strided) views side by side
  in the channels, times the kernel as a [kh·kw·Cin, Cout] matrix. Its gradients are a
  matrix product each and pads and adds of the views."""
  (kh, kw, cin, cout), (sh, sw), (b, h, w, _) = kernel.shape, strides, x.shape
  if padding == "SAME":
    padding = (_same_pads(h, kh, sh), _same_pads(w, kw, sw))
  (ph0, ph1), (pw0, pw1) = padding
  oh, ow = (h + ph0 + ph1 - kh) // sh + 1, (w + pw0 + pw1 - kw) // sw + 1
  # Taps whose every view lies in the padding multiply zeros only (a 5x5 kernel on a 2x2
  # image reaches it with its central 3x3): they are left out.
  (i0, i1), (j0, j1) = _taps_reaching(h, kh, sh, ph0, oh), _taps_reaching(w, kw, sw, pw0, ow)
  kernel = kernel[i0:i1, j0:j1]
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (ph0, ph1, 0), (pw0, pw1, 0), (0, 0, 0)))
  views = [jax.lax.slice(x, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, cin),
                         (1, sh, sw, 1)) for i in range(i0, i1) for j in range(j0, j1)]
  patches = jnp.concatenate(views, axis=-1).reshape(b * oh * ow, -1)
  return jnp.dot(patches, kernel.reshape(-1, cout)).reshape(b, oh, ow, cout)


def _taps_reaching(size: int, kernel: int, stride: int, pad_before: int, out: int
                   ) -> tuple[int, int]:
  """[first, last + 1) of the taps along an axis whose views touch the input, not only the
  padding (tap t reads padded positions t, t + stride, ..., t + stride·(out - 1))."""
  reaching = [t for t in range(kernel)
              if any(pad_before <= t + stride * k < pad_before + size for k in range(out))]
  return reaching[0], reaching[-1] + 1


def _as_matrix_product(x_shape, kernel_shape, strides) -> bool:
  """Where XLA:CPU's matrix product beats its convolution (measured on 2-core AVX2 CPUs):
  few output pixels (its convolution kernels are made for large images) or few input
  channels (a 1-channel image's convolution barely vectorises; 3-channel images are faster
  with XLA's: `python benchmarks/conv_lowering.py`, cyclegan_digits)."""
  out_pixels = -(-x_shape[1] // strides[0]) * -(-x_shape[2] // strides[1])
  return out_pixels <= MATMUL_MAX_OUT_PIXELS or kernel_shape[2] <= MATMUL_MAX_IN_CHANNELS


MATMUL_MAX_OUT_PIXELS, MATMUL_MAX_IN_CHANNELS = 16, 1


def _conv(x, kernel, strides, padding):
  if _as_matrix_product(x.shape, kernel.shape, strides):
    return _patch_conv(x, kernel, tuple(strides), padding)
  return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _subpixel_conv_input_grad(dy: jax.Array, kernel: jax.Array, x_shape, strides) -> jax.Array:
  """The input gradient of a strided "SAME" convolution, as one stride-1 convolution.

  Padded input position u = s·m + ρ receives dy[m - a] through tap t = s·a + ρ: for each
  phase ρ a stride-1 convolution of dy with ceil(k/s) taps, then a depth-to-space shuffle.
  """
  (_, h, w, cin), (kh, kw, _, cout) = x_shape, kernel.shape
  (sh, sw), (oh, ow) = strides, dy.shape[1:3]
  (ph, _), (pw, _) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
  ah, aw = -(-kh // sh), -(-kw // sw)
  mh, mw = -(-(h + ph) // sh), -(-(w + pw) // sw)
  taps = jnp.pad(kernel, ((0, sh * ah - kh), (0, sw * aw - kw), (0, 0), (0, 0)))
  taps = taps.reshape(ah, sh, aw, sw, cin, cout)[::-1, :, ::-1]  # Flipped: dy[m - a].
  taps = taps.transpose(0, 2, 5, 1, 3, 4).reshape(ah, aw, cout, sh * sw * cin)
  z = _conv(dy, taps, (1, 1), ((ah - 1, mh - oh), (aw - 1, mw - ow)))
  b = dy.shape[0]
  z = z.reshape(b, mh, mw, sh, sw, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, mh * sh, mw * sw, cin)
  return z[:, ph:ph + h, pw:pw + w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _strided_conv(x, kernel, strides):
  return _conv(x, kernel, strides, "SAME")


def _strided_conv_fwd(x, kernel, strides):
  return _strided_conv(x, kernel, strides), (x, kernel)


def _strided_conv_bwd(strides, residuals, dy):
  x, kernel = residuals
  (kernel_grad,) = jax.vjp(lambda k: _conv(x, k, strides, "SAME"), kernel)[1](dy)
  return _subpixel_conv_input_grad(dy, kernel, x.shape, strides), kernel_grad


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


_SUBPIXEL_MIN_CHANNEL_PRODUCT = 4096  # Input x output channels.


class _Convolution(nn.Module):
  """Parameters like flax's convolutions (HWIO kernel, bias); `_compute` does the arithmetic."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: Any = jnp.float32  # Compute dtype; params stay float32.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    y = self._compute(x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


class Conv(_Convolution):
  """A 2D convolution with padding "SAME": `flax.linen.Conv`'s parameters and outputs.

  With strides and wide channels, its input gradient is computed by
  `_subpixel_conv_input_grad` instead of XLA's zero-dilated transposed convolution (about
  3x the forward time on XLA:CPU).
  """

  def _compute(self, x, kernel, strides):
    # The sub-pixel input gradient pays off for wide layers only: measured on XLA:CPU it
    # saves 30% of a 64->128-channel layer's step and costs 10-60% on 32->64 and narrower.
    if strides == (1, 1) or kernel.shape[2] * kernel.shape[3] < _SUBPIXEL_MIN_CHANNEL_PRODUCT:
      return _conv(x, kernel, strides, "SAME")
    return _strided_conv(x, kernel, strides)


class ConvTranspose(_Convolution):
  """A 2D transposed convolution with padding "SAME": `flax.linen.ConvTranspose`'s
  parameters and outputs, computed by `subpixel_conv_transpose`.
  """

  def _compute(self, x, kernel, strides):
    return subpixel_conv_transpose(x, kernel, strides)


class ReflectConv(_Convolution):
  """A stride-1 2D convolution of an input padded by reflecting it at the border (as
  CycleGAN's ResNet generator pads, against the dark frames zero padding draws), so the
  output keeps the input's size; `flax.linen.Conv`'s parameters."""

  def _compute(self, x, kernel, strides):
    pad_h, pad_w = kernel.shape[0] // 2, kernel.shape[1] // 2
    x = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect")
    return _conv(x, kernel, strides, ((0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def instance_norm(x, scale, bias, epsilon: float):
  """(x - mean) / sqrt(var + epsilon) · scale + bias, the statistics per example and channel
  over the spatial axes of x [B, ..., C], in float32 (the result too); flax.linen.InstanceNorm's
  function."""
  return _instance_norm_fwd(x, scale, bias, epsilon)[0]


def _instance_statistics(x, epsilon):
  axes = tuple(range(1, x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axes, keepdims=True)
  # flax's fast variance: E[x²] - E[x]², clipped at 0.
  var = jnp.maximum(jnp.mean(x * x, axes, keepdims=True) - mean * mean, 0.0)
  return x, mean, jax.lax.rsqrt(var + epsilon)


def _instance_norm_fwd(x, scale, bias, epsilon):
  x32, mean, inv_std = _instance_statistics(x, epsilon)
  return (x32 - mean) * inv_std * scale + bias, (x, mean, inv_std, scale)


def _instance_norm_bwd(epsilon, residuals, dy):
  # The closed form, with one pass of two sums over the image: autodiff of the statistics
  # made XLA:CPU reduce the image four times, a fifth of CycleGAN's step on 2 cores.
  x, mean, inv_std, scale = residuals
  axes = tuple(range(1, x.ndim - 1))
  g = dy.astype(jnp.float32)
  normalised = (x.astype(jnp.float32) - mean) * inv_std
  g_sum = jnp.sum(g, axes, keepdims=True)
  g_dot = jnp.sum(g * normalised, axes, keepdims=True)
  n = np.prod([x.shape[a] for a in axes])
  dx = scale * inv_std * (g - (g_sum + normalised * g_dot) / n)
  batch = (0, *axes)
  return dx.astype(x.dtype), jnp.sum(g_dot, batch), jnp.sum(g_sum, batch)


instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


class InstanceNorm(nn.Module):
  """`flax.linen.InstanceNorm` (its parameters "scale" and "bias", its outputs), with the
  backward pass written out (`instance_norm`)."""
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return instance_norm(x, scale, bias, self.epsilon).astype(
        self.dtype or jnp.result_type(x.dtype, jnp.float32))


class Dropout(nn.Module):
  """Inverted dropout, like `flax.linen.Dropout`, with the mask drawn in chunks of the batch.

  XLA:CPU generates threefry bits for one array of a few million elements several times
  slower per element than for a few arrays of a million (3.2M at once: 24 ms; in four
  chunks: 6 ms, on 2 cores); the chunks' keys are folded from the layer's key, so the
  mask does not depend on how the batch is sharded.
  """
  rate: float
  deterministic: bool = False
  chunk_elements: int = 1 << 20

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    key = self.make_rng("dropout")
    rows = max(1, self.chunk_elements // max(1, int(np.prod(x.shape[1:]))))
    keep = jnp.concatenate([
        jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - self.rate,
                             (min(rows, x.shape[0] - start), *x.shape[1:]))
        for i, start in enumerate(range(0, x.shape[0], rows))])
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def maybe_spectral_norm(layer: nn.Module, enabled: bool, train: bool):
  """`layer`, or `layer` with spectral normalisation (Miyato et al. 2018) when `enabled`.

  The power iteration's vector lives in the module's "batch_stats" collection and advances
  only when `train` is true, so evaluation is deterministic. It runs on replicated
  parameters, hence gives the same estimate on every device.
  """
  if not enabled:
    return layer
  normalized = nn.SpectralNorm(layer)
  return lambda *args, **kwargs: normalized(*args, update_stats=train, **kwargs)


def condition_latent(z: jax.Array, labels: jax.Array | None, num_classes: int) -> jax.Array:
  """z [B, latent], with the labels' one-hot codes appended when the model is conditional."""
  if not num_classes:
    return z
  return jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], axis=-1)


class ConditionalBatchNorm(nn.Module):
  """BatchNorm whose scale and offset are looked up by class (de Vries et al. 2017), as in
  the class-conditional SNGAN and BigGAN generators."""
  num_classes: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool) -> jax.Array:
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                     use_scale=False, use_bias=False, dtype=self.dtype)(x)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    scale = nn.Embed(self.num_classes, x.shape[-1], embedding_init=nn.initializers.ones)(labels)
    offset = nn.Embed(self.num_classes, x.shape[-1], embedding_init=nn.initializers.zeros)(labels)
    return x * scale.reshape(shape).astype(x.dtype) + offset.reshape(shape).astype(x.dtype)


CONDITIONING = ("none", "projection", "acgan")


class DiscriminatorHead(nn.Module):
  """features [B, F] (and labels [B]) -> (logits [B], class logits [B, K] or None).

  conditioning: "none"; "projection" adds <embed(label), features> to the logit (Miyato &
  Koyama 2018); "acgan" adds an auxiliary classifier over the classes (Odena et al. 2017).
  """
  num_classes: int = 0
  conditioning: str = "none"
  spectral_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, labels: jax.Array | None, train: bool):
    sn = lambda layer: maybe_spectral_norm(layer, self.spectral_norm, train)
    logits = sn(nn.Dense(1, dtype=self.dtype))(features)[:, 0].astype(jnp.float32)
    class_logits = None
    if self.conditioning == "projection":
      embedding = sn(nn.Embed(self.num_classes, features.shape[-1]))(labels)
      logits = logits + jnp.sum(embedding * features, axis=-1).astype(jnp.float32)
    elif self.conditioning == "acgan":
      class_logits = sn(nn.Dense(self.num_classes, dtype=self.dtype))(features).astype(jnp.float32)
    return logits, class_logits
