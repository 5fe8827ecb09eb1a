"""InceptionV3 as used for FID: pytorch-fid's `fid_inception_v3`, in Flax linen (NHWC).

The network is the TensorFlow Inception graph of 2015-12-05 that TTUR's FID and the
Improved-GAN Inception score use, as ported to PyTorch by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`). pytorch-fid builds it from torchvision's
`Inception3(num_classes=1008, aux_logits=False)` and patches four kinds of blocks to
match the TensorFlow graph; those patches are reproduced here:

* FIDInceptionA, FIDInceptionC, FIDInceptionE(pool="avg") (Mixed_5b-d, 6b-e, 7b): the
  pool branch averages with `count_include_pad=False`, because TensorFlow's average pool
  leaves padded zeros out of the mean (torchvision's `F.avg_pool2d` counts them).
* FIDInceptionE(pool="max") (Mixed_7c): the pool branch is a 3x3 max pool, not an average.

Module and parameter names follow the PyTorch state dict ("Mixed_5b.branch5x5_2.conv.weight"
is params["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"]) so that `gen.inception.load_params`
converts the checkpoint by name. Every module is inference-only: BatchNorm always uses its
running statistics, and there is no dropout (the one before `fc` is inactive in eval mode).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

# FID needs float32 features everywhere: without HIGHEST, GPUs may run float32
# convolutions in TF32 (10-bit mantissa), which shifts FID in the second decimal.
_HIGHEST = jax.lax.Precision.HIGHEST

NUM_CLASSES = 1008  # The TF graph's softmax: 1000 ImageNet classes, a background class, 7 unused.


def _pad(padding: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's symmetric Conv2d/pool padding (ph, pw) as lax's explicit ((lo, hi), (lo, hi))."""
  return ((padding[0], padding[0]), (padding[1], padding[1]))


def avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """`F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)`, NHWC.

  Each output averages only the in-image pixels of its window (4 at corners, 6 at edges).
  """
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_pad((1, 1)), count_include_pad=False)


def max_pool_3x3(x: jax.Array, stride: int, padding: int) -> jax.Array:
  """`F.max_pool2d(x, 3, stride, padding)`, NHWC: padding is -inf, so it never wins."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=_pad((padding, padding)))


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.

  [B, H, W, Cin] -> [B, H', W', features]. `padding` is PyTorch's symmetric (ph, pw); the
  output size is floor((H + 2·ph - kh) / stride) + 1, as in PyTorch ('VALID' plus padding).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=_pad(self.padding), use_bias=False, precision=_HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


class FIDInceptionA(nn.Module):
  """Mixed_5b-d, 35x35: [B, 35, 35, Cin] -> [B, 35, 35, 224 + pool_features]."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)

    branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)

    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)

    branch_pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(
        avg_pool_3x3_exclude_pad(x))
    # Channel order is torch.cat's order; fc's weights depend on it.
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (unpatched), 35x35 -> 17x17: [B, 35, 35, Cin] -> [B, 17, 17, 480 + Cin]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)

    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)

    branch_pool = max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b-e, 17x17 with factorised 7x7s: [B, 17, 17, Cin] -> [B, 17, 17, 768]."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)

    branch7x7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)

    branch7x7dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)

    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (unpatched), 17x17 -> 8x8: [B, 17, 17, Cin] -> [B, 8, 8, 512 + Cin]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)

    branch7x7x3 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)

    branch_pool = max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (pool="avg", FIDInceptionE_1) and Mixed_7c (pool="max", FIDInceptionE_2).

  [B, 8, 8, Cin] -> [B, 8, 8, 2048]. The max pool in Mixed_7c is what the 2015 TF graph
  does (pytorch-fid calls it likely a bug in that graph); FID features depend on it.
  """
  pool: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)

    branch3x3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
    ], axis=-1)

    branch3x3dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl),
    ], axis=-1)

    if self.pool == "avg":
      pooled = avg_pool_3x3_exclude_pad(x)
    elif self.pool == "max":
      pooled = max_pool_3x3(x, stride=1, padding=1)
    else:
      raise ValueError(f"FIDInceptionE.pool={self.pool!r}; use 'avg' or 'max'.")
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3, inference only.

  Input: images [B, 299, 299, 3] already resized to 299x299 and scaled to [-1, 1]
  (`gen.inception.resize_for_inception` does both, as pytorch-fid's forward does). The
  layers up to pool3 are fully convolutional, so other sizes run too, but the FID protocol
  is 299x299.

  Returns a dict of float32 arrays:
    pool3: [B, 2048] the global average pool after Mixed_7c; FID/KID/precision-recall
      features (pytorch-fid's block 3, TTUR's `pool_3:0`).
    logits: [B, 1008] `fc(pool3)` = pool3 @ W + b, the FID network's fc layer as
      pytorch-fid's checkpoint holds it (1008 classes, the TF graph's `softmax/logits`).
    logits_unbiased: [B, 1008] pool3 @ W without the bias. This is what the Inception score
      of Improved-GAN / TTUR feeds to its softmax: they rebuild the logits from the weights
      of `softmax/logits/MatMul` only and take the softmax over all 1008 classes
      (torch-fidelity's "logits_unbiased" is the same). Use this for IS comparable to the
      published numbers; `logits` is the network's own classifier output.
  """
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = x.astype(jnp.float32)
    # [B, 299, 299, 3]
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # [B, 147, 147, 64]
    x = max_pool_3x3(x, stride=2, padding=0)  # [B, 73, 73, 64]
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)  # [B, 73, 73, 80]
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
    x = max_pool_3x3(x, stride=2, padding=0)  # [B, 35, 35, 192]
    x = FIDInceptionA(32, name="Mixed_5b")(x)  # [B, 35, 35, 256]
    x = FIDInceptionA(64, name="Mixed_5c")(x)  # [B, 35, 35, 288]
    x = FIDInceptionA(64, name="Mixed_5d")(x)  # [B, 35, 35, 288]
    x = InceptionB(name="Mixed_6a")(x)  # [B, 17, 17, 768]
    x = FIDInceptionC(128, name="Mixed_6b")(x)  # [B, 17, 17, 768]
    x = FIDInceptionC(160, name="Mixed_6c")(x)
    x = FIDInceptionC(160, name="Mixed_6d")(x)
    x = FIDInceptionC(192, name="Mixed_6e")(x)  # [B, 17, 17, 768]
    x = InceptionD(name="Mixed_7a")(x)  # [B, 8, 8, 1280]
    x = FIDInceptionE("avg", name="Mixed_7b")(x)  # [B, 8, 8, 2048]
    x = FIDInceptionE("max", name="Mixed_7c")(x)  # [B, 8, 8, 2048]
    pool3 = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)): [B, 2048]
    fc = nn.Dense(self.num_classes, precision=_HIGHEST, name="fc")
    logits = fc(pool3)
    logits_unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=_HIGHEST)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": logits_unbiased}
