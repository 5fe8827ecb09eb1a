"""Datasets and the input pipeline.

Every dataset is a random-access source of examples. Indices are shuffled deterministically
from the config seed in `grain`'s order (computed a batch at a time) and batched by a grain
iterator; each process then reads only its own rows of every global batch, and a
background thread places the batches on the mesh ahead of the train step. The grain
iterator's state is the data position that checkpoints store, so a resumed run sees the
same batches as an uninterrupted one.

Images leave this module as float32 NHWC in [-1, 1] ("model space"); 2D mixtures as float32
[N, 2]. Datasets are found by name: gen's own (`DATASETS`, tfds's unpaired `cycle_gan/*`
among them), those added with `register`, and any image dataset of tensorflow-datasets.
"""
import dataclasses
import functools
import gzip
import importlib
import importlib.util
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from gen import UsageError, sharding

# Offline datasets are fixed objects: their contents never depend on the config seed.
_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
_MIXTURE_SIZE = {"train": 100_000, "test": 10_000}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A random-access dataset.

  Attributes:
    name: the dataset's name in configs.
    spec: {field: jax.ShapeDtypeStruct} of one example: "x" (images [H, W, C] in [-1, 1],
      points [2]) and "label" (int32 []) for gen's image and point datasets; a paired
      (image-to-image) dataset adds "input", the image that "x" is the translation of.
    num_examples: the size of the split.
    num_classes: the number of labels (0 where there are none).
    read: indices [B] -> {field: [B, ...]}, every field of `spec`.
    fixed: config values the data determined, {dotted key: value} (a corpus's sha256), and
    files: {dotted key: (file name, contents)} that later launches need to read the examples
      the same way without the data (a tokenizer). A run records both in its workdir, with
      each file's key set to the file's path there, and every later launch on the workdir
      uses them (gen.experiment.build).
    read_augmented: None, or (indices [B], epochs [B], seed) -> what `read` gives, with the
      training-time randomness of the data (random crops and flips) drawn from (seed, epoch,
      index) alone: training batches are read with it (`batch_dataset`), so that the data
      position a checkpoint stores gives the same batch again, on any number of devices.
    domain_sizes: for unpaired image-to-image data (CycleGAN's), {"input": N_A, "x": N_B},
      the two domains' image counts: row i holds A image i mod N_A and B image i mod N_B,
      unrelated (no row is a true translation), so a domain's images are the first N rows'
      field; None for other data.
  """
  name: str
  spec: dict[str, jax.ShapeDtypeStruct]
  num_examples: int
  num_classes: int
  read: Callable[[np.ndarray], dict[str, np.ndarray]]
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  files: dict[str, tuple[str, bytes]] = dataclasses.field(default_factory=dict)
  read_augmented: Callable[[np.ndarray, np.ndarray, int], dict[str, np.ndarray]] | None = None
  domain_sizes: dict[str, int] | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of one example's "x" (of its first field, for a dataset without one)."""
    return tuple((self.spec["x"] if "x" in self.spec else next(iter(self.spec.values()))).shape)


def to_unit_range(images):
  """Model space [-1, 1] -> [0, 1], clipped: the range of images that leave gen and of the
  likelihoods' targets. For NumPy and JAX arrays alike."""
  return ((images + 1.0) * 0.5).clip(0.0, 1.0)


def chunks(array, size: int):
  """Consecutive slices of `array` of `size` rows (the last one shorter)."""
  for start in range(0, len(array), size):
    yield array[start:start + size]


def examples_spec(x_shape, x_dtype=np.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """The spec of examples "x" of `x_shape` with int32 labels."""
  return {"x": jax.ShapeDtypeStruct(tuple(x_shape), np.dtype(x_dtype)),
          "label": jax.ShapeDtypeStruct((), np.dtype(np.int32))}


def _in_memory(name, x, labels, num_classes) -> Dataset:
  x = np.ascontiguousarray(x, np.float32)
  labels = np.asarray(labels, np.int32)
  return Dataset(name, examples_spec(x.shape[1:]), len(x), num_classes,
                 lambda idx: {"x": x[idx], "label": labels[idx]})


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, 8, 8] in [0, 1], labels [N]) of a split of scikit-learn's digits: the fixed
  80/20 permutation every digits dataset shares, so their test splits are the same digits."""
  images, labels = load_digits()
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
  num_test = int(round(len(order) * _DIGITS_TEST_FRACTION))
  idx = {"train": order[num_test:], "test": order[:num_test]}[split]
  return images[idx] / 16.0, labels[idx]


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as `sklearn.datasets.load_digits` reads them (images [1797, 8, 8]
  of 0-16 as float64, labels int64), from the file scikit-learn ships, without importing
  scikit-learn, whose import would be most of a digits run's data loading."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None:
    raise UsageError("The digits data ship with scikit-learn, which is not installed: "
                     "pip install scikit-learn (./launch.sh installs it).")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    table = np.loadtxt(f, delimiter=",")
  images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
  images.flags.writeable = labels.flags.writeable = False  # Cached: every caller shares them.
  return images, labels


def digits(split: str) -> Dataset:
  """scikit-learn's 1,797 handwritten 8x8 digits (bundled; no network), split 80/20."""
  images, labels = _digits_split(split)
  return _in_memory("digits", images[..., None] * 2.0 - 1.0, labels, 10)


def upsample_bilinear(images: np.ndarray, factor: int) -> np.ndarray:
  """images [N, H, W] -> [N, H·factor, W·factor], bilinear with half-pixel centres and the
  border clamped: what `jax.image.resize(..., "bilinear")` and PIL compute when enlarging."""

  def taps(size):
    position = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(position).astype(np.int64)
    return low, np.minimum(low + 1, size - 1), position - low

  low, high, t = taps(images.shape[1])
  rows = images[:, low] * (1 - t)[:, None] + images[:, high] * t[:, None]
  low, high, t = taps(images.shape[2])
  return rows[:, :, low] * (1 - t) + rows[:, :, high] * t


# The digits are enlarged 4x, so a full-contrast step between two 8x8 pixels becomes a ramp
# rising 0.25 a pixel: a slope above 0.1 outlines the strokes (36% of the pixels are edges)
# and leaves the flat background and the strokes' centres out.
EDGES2DIGITS_SCALE = 4
EDGE_THRESHOLD = 0.1


def edge_map(images: np.ndarray, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
  """Edges [N, H, W] (bool) of images [N, H, W] in [0, 1]: where the Sobel gradient's
  magnitude, in intensity per pixel (the 3x3 Sobel kernels' response divided by 8, their
  response to a unit slope), exceeds `threshold`. The border is extended by its own pixels."""
  from scipy.ndimage import correlate1d

  # Each kernel is a difference along one image axis and [1, 2, 1] along the other, axis by
  # axis: scipy.ndimage.sobel would smooth along the batch axis too.
  def sobel(difference_axis, smoothing_axis):
    difference = correlate1d(images, [-1.0, 0.0, 1.0], axis=difference_axis, mode="nearest")
    return correlate1d(difference, [1.0, 2.0, 1.0], axis=smoothing_axis, mode="nearest")

  return np.hypot(sobel(2, 1), sobel(1, 2)) / 8.0 > threshold


def edges2digits(split: str) -> Dataset:
  """Paired image-to-image data made from scikit-learn's digits, as edges2shoes is from shoes:
  each 8x8 digit enlarged 4x bilinearly to 32x32 is the target "x" (in [-1, 1]), its edge map
  (`edge_map`: -1 background, 1 edge) the "input", with the digit's "label"; the same 80/20
  split as `digits`."""
  images, labels = _digits_split(split)
  targets = upsample_bilinear(images, EDGES2DIGITS_SCALE)
  inputs = np.where(edge_map(targets), 1.0, -1.0)
  x = np.ascontiguousarray(targets[..., None] * 2.0 - 1.0, np.float32)
  inputs = np.ascontiguousarray(inputs[..., None], np.float32)
  labels = np.asarray(labels, np.int32)
  spec = {**examples_spec(x.shape[1:]), "input": jax.ShapeDtypeStruct(inputs.shape[1:],
                                                                      np.dtype(np.float32))}
  return Dataset("edges2digits", spec, len(x), 10,
                 lambda idx: {"input": inputs[idx], "x": x[idx], "label": labels[idx]})


# digits2styled's domain B: strokes dilated by a 3x3 maximum (about 2 pixels thicker at
# 32x32), drawn in yellow on dark blue. A per-pixel colour map of domain A cannot make it,
# since thickening a stroke needs its neighbours.
STYLED_STROKE = np.array([1.0, 0.85, 0.1])
STYLED_BACKGROUND = np.array([0.1, 0.15, 0.5])
STYLED_DILATION = 3


def digit_style(digits: np.ndarray) -> np.ndarray:
  """Domain B of `digits2styled`: grey digits [N, H, W] in [0, 1] -> [N, H, W, 3] in [0, 1],
  dilated by a STYLED_DILATION-square maximum (the border extended), then coloured
  background + t·(stroke − background) at each pixel's dilated intensity t."""
  from scipy.ndimage import maximum_filter
  thick = maximum_filter(digits, size=(1, STYLED_DILATION, STYLED_DILATION), mode="nearest")
  return STYLED_BACKGROUND + thick[..., None] * (STYLED_STROKE - STYLED_BACKGROUND)


def undo_digit_style(images: np.ndarray) -> np.ndarray:
  """A grey digit [N, H, W, 1] in [0, 1] read back from a styled one [N, H, W, 3] in [0, 1]:
  the colour's position t between background and stroke, eroded by the dilation's square
  (a morphological opening of the dilated digit, close to the original strokes), so that a
  classifier of plain digits can read it."""
  from scipy.ndimage import minimum_filter
  direction = STYLED_STROKE - STYLED_BACKGROUND
  t = np.clip((images - STYLED_BACKGROUND) @ direction / (direction @ direction), 0.0, 1.0)
  thin = minimum_filter(t, size=(1, STYLED_DILATION, STYLED_DILATION), mode="nearest")
  return thin[..., None]


def digits2styled(split: str) -> Dataset:
  """Unpaired image-to-image data made from scikit-learn's digits, as horse2zebra is from
  photos: domain A ("input") the digits enlarged 4x bilinearly to 32x32, grey on 3 equal
  channels; domain B ("x") digits in `digit_style` (thick, coloured), both in [-1, 1].

  train: the split's digits in a fixed random order; the first half are domain A, the other
    half, different digits, domain B, so the two sets share no image. Row i pairs A image i
    with B image i, unrelated to it ("label" is the A image's).
  test: each test digit a as "input" and its true translation style(a) as "x" (read the
    other way, the pairs of the inverse translation), with the digit's "label".
  The same 80/20 split as `digits`."""
  images, labels = _digits_split(split)
  enlarged = upsample_bilinear(images, EDGES2DIGITS_SCALE)
  if split == "train":
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(enlarged))
    half = len(order) // 2
    a_rows, b_rows = order[:half], order[half:2 * half]
  else:
    a_rows = b_rows = np.arange(len(enlarged))
  inputs = np.repeat(enlarged[a_rows, ..., None], 3, axis=-1) * 2.0 - 1.0
  x = digit_style(enlarged[b_rows]) * 2.0 - 1.0
  inputs, x = (np.ascontiguousarray(v, np.float32) for v in (inputs, x))
  labels = np.asarray(labels[a_rows], np.int32)
  spec = {**examples_spec(x.shape[1:]), "input": jax.ShapeDtypeStruct(inputs.shape[1:],
                                                                      np.dtype(np.float32))}
  return Dataset("digits2styled", spec, len(x), 10,
                 lambda idx: {"input": inputs[idx], "x": x[idx], "label": labels[idx]})


def ring_means(radius: float = 2.0, num_modes: int = 8) -> np.ndarray:
  """[8, 2] means on a circle: (cos 2πi/8, sin 2πi/8)·r, i = 0..7 (no repeated mode)."""
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def grid_means() -> np.ndarray:
  """[25, 2] means on the grid {-4, -2, 0, 2, 4}²."""
  axis = np.arange(-4.0, 5.0, 2.0)
  return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)


MIXTURES = {"ring2d": (ring_means, 0.02), "grid2d": (grid_means, 0.05)}


def mixture(name: str, split: str) -> Dataset:
  """Equal-weight 2D Gaussian mixtures, the standard mode-collapse benchmarks."""
  means_fn, std = MIXTURES[name]
  means = means_fn()
  rng = np.random.default_rng([_SPLIT_SEED, ["train", "test"].index(split)])
  labels = rng.integers(len(means), size=_MIXTURE_SIZE[split])
  x = means[labels] + std * rng.standard_normal((len(labels), 2))
  return _in_memory(name, x, labels, len(means))


def _reachable(url: str = "https://storage.googleapis.com", timeout: float = 5.0) -> bool:
  """Whether tfds's download host answers (through any proxy the environment sets)."""
  import urllib.request
  try:
    urllib.request.urlopen(url, timeout=timeout).close()
    return True
  except Exception:  # Any failure to connect means the download would fail too.
    return False


def tfds_source(name: str, split: str, data_dir: str | None):
  """A split of a tensorflow-datasets dataset, opened with `tfds.data_source` (no TensorFlow).

  A dataset not yet prepared in `data_dir` is downloaded and prepared when the network is
  reachable; offline, the error comes at once instead of after tfds's download retries.
  """
  import tensorflow_datasets as tfds
  fix = (f"The first use downloads and prepares it, which needs the network; on an offline "
         f"machine prepare it elsewhere (`tfds build {name}`) and pass "
         f"--config.dataset.data_dir=DIR, or use an offline dataset (digits, ring2d, grid2d, pydoc).")
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as not_prepared:  # tfds raises many types: missing files, bad names.
    if not _reachable():
      raise UsageError(f"The tfds dataset '{name}' (split '{split}') is not prepared in "
                       f"data_dir={data_dir!r} ({type(not_prepared).__name__}: {not_prepared}), "
                       f"and the network is unreachable.\n{fix}") from not_prepared
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:
      raise UsageError(f"Could not open the tfds dataset '{name}' (split '{split}', "
                       f"data_dir={data_dir!r}): {type(e).__name__}: {e}\n{fix}") from e
  return source


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """A uint8 image [H, W, C] (C 1 or 3) -> float32 [size, size, 3] in [-1, 1], resized
  bicubically by PIL as the CycleGAN paper's code (torchvision's Resize) does, ignoring the
  aspect ratio."""
  from PIL import Image
  image = np.asarray(image, np.uint8)
  picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
  if picture.size != (size, size):
    picture = picture.resize((size, size), Image.BICUBIC)
  return np.asarray(picture, np.float32) / 127.5 - 1.0


def random_crop_and_flip(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A size x size crop of image [L, L, C] at an offset uniform in [0, L - size] on each
  axis, mirrored left to right with probability 1/2 (the paper's code's augmentation)."""
  top, left = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
  crop = image[top:top + size, left:left + size]
  return crop[:, ::-1] if rng.random() < 0.5 else crop


CYCLE_GAN_DOMAINS = {"input": "A", "x": "B"}  # Field -> the tfds split's suffix.


def cycle_gan(config, split: str) -> Dataset:
  """Unpaired image-to-image data of tensorflow-datasets' `cycle_gan/<pair>` (horse2zebra,
  monet2photo, ...): domain A ("input") from tfds split `<split>A`, domain B ("x") from
  `<split>B` (see `tfds_source`), of different sizes N_A and N_B.

  Rows: max(N_A, N_B), an epoch of the paper's code. `read` gives row i as A image i mod N_A
  and B image i mod N_B, each resized to `config.crop_size` (256) squares: the evaluation
  split as the paper tests, and the training rows snapshots show. Training batches
  (`read_augmented`) hold A image i mod N_A and a B image drawn uniformly (as the paper's
  code draws it), each resized to `config.load_size` (286), cropped at random to
  crop_size and flipped left to right with probability 1/2, all drawn from
  (seed, epoch, i), so that a resumed run reads the same batches.
  """
  load_size, crop_size = config.get("load_size", 286), config.get("crop_size", 256)
  if not (isinstance(crop_size, int) and isinstance(load_size, int) and 0 < crop_size <= load_size):
    raise UsageError(f"config.dataset.crop_size={crop_size!r} and load_size={load_size!r}: the "
                     f"training images are resized to load_size and cropped to crop_size, so "
                     f"give integers with 0 < crop_size <= load_size (the paper's 256 and 286).")
  sources = {field: tfds_source(config.name, split + domain, config.get("data_dir"))
             for field, domain in CYCLE_GAN_DOMAINS.items()}
  sizes = {field: len(source) for field, source in sources.items()}
  empty = [f"{split}{CYCLE_GAN_DOMAINS[f]}" for f, n in sizes.items() if not n]
  if empty:
    raise UsageError(f"The tfds dataset '{config.name}' has no images in {empty}.")

  def image(field, index, size):
    return resize_image(sources[field][int(index) % sizes[field]]["image"], size)

  def read(idx):
    return {field: np.stack([image(field, i, crop_size) for i in idx]) for field in sources}

  def read_augmented(idx, epochs, seed):
    rows = {field: [] for field in sources}
    for index, epoch in zip(idx, epochs):
      rng = np.random.default_rng([int(seed) % 2**32, int(epoch), int(index)])
      b_index = rng.integers(sizes["x"])
      for field, i in (("input", index), ("x", b_index)):
        rows[field].append(random_crop_and_flip(image(field, i, load_size), crop_size, rng))
    return {field: np.stack(images) for field, images in rows.items()}

  shape = jax.ShapeDtypeStruct((crop_size, crop_size, 3), np.dtype(np.float32))
  return Dataset(config.name, {"input": shape, "x": shape}, max(sizes.values()), 0, read,
                 read_augmented=read_augmented, domain_sizes=sizes)


def tfds_images(name: str, split: str, data_dir: str | None) -> Dataset:
  """An image dataset from tensorflow-datasets (see `tfds_source`)."""
  import tensorflow_datasets as tfds
  source = tfds_source(name, split, data_dir)
  first = source[0]
  shape = tuple(first["image"].shape)
  features = tfds.builder(name, data_dir=data_dir).info.features
  # An unlabelled dataset, or labels that are not classes: no class count to check against.
  num_classes = getattr(features["label"], "num_classes", 0) if "label" in features.keys() else 0

  def read(idx):
    examples = [source[int(i)] for i in idx]
    x = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1.0
    labels = np.asarray([e.get("label", 0) for e in examples], np.int32)
    return {"x": x, "label": labels}

  return Dataset(name, examples_spec(shape), len(source), num_classes, read)


# name -> load(dataset_config, split) -> Dataset, or the name of the module whose `load` it
# is, imported when first used (gen.text builds on this module, and its tokenizers are
# imported only for text). Any other name is a tfds image dataset.
DATASETS: dict[str, Callable[[Any, str], Dataset] | str] = {
    "digits": lambda config, split: digits(split),
    "edges2digits": lambda config, split: edges2digits(split),
    "digits2styled": lambda config, split: digits2styled(split),
    "cycle_gan": cycle_gan,  # cycle_gan/horse2zebra, cycle_gan/monet2photo, ...
    **{name: (lambda config, split, name=name: mixture(name, split)) for name in MIXTURES},
    **{name: "gen.text" for name in ("pydoc", "tiny_shakespeare", "lm1b")},
}
# The datasets that need no download (gen.results runs the experiments on them).
OFFLINE = {"digits", "edges2digits", "digits2styled", *MIXTURES, "pydoc"}


def register(name: str, load_fn: Callable[[Any, str], Dataset]) -> None:
  """Makes `config.dataset.name = name` load `load_fn(config.dataset, split)`; a name with a
  "/" is matched by what comes before it too ("cycle_gan" for "cycle_gan/horse2zebra")."""
  DATASETS[name] = load_fn


def load(config, split: str | None = None) -> Dataset:
  """The dataset named by `config` (a `config.dataset` ConfigDict)."""
  split = split or config.split
  load_fn = DATASETS.get(config.name) or DATASETS.get(config.name.split("/")[0])
  if isinstance(load_fn, str):
    load_fn = importlib.import_module(load_fn).load
  if load_fn is not None:
    return load_fn(config, split)
  return tfds_images(config.name, split, config.get("data_dir"))


def _seed_seq(seeds: np.ndarray, n: int) -> list[np.ndarray]:
  """`std::seed_seq{seed}.generate` of n 32-bit words, for each of `seeds` (C++11
  [rand.util.seedseq], one seed word): the round keys grain's index shuffle draws."""
  mask = np.uint64(0xFFFFFFFF)
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p, q, m = (n - t) // 2, (n - t) // 2 + t, max(2, n)
  words = [np.full(seeds.shape, 0x8B8B8B8B, np.uint64) for _ in range(n)]
  mix = lambda x: x ^ (x >> np.uint64(27))
  for k in range(m):
    r1 = (np.uint64(1664525) * mix(words[k % n] ^ words[(k + p) % n] ^ words[(k - 1) % n])) & mask
    r2 = (r1 + (1 if k == 0 else (k % n) + seeds if k == 1 else k % n)) & mask
    words[(k + p) % n] = (words[(k + p) % n] + r1) & mask
    words[(k + q) % n] = (words[(k + q) % n] + r2) & mask
    words[k % n] = r2
  for k in range(m, m + n):
    total = (words[k % n] + words[(k + p) % n] + words[(k - 1) % n]) & mask
    r3 = (np.uint64(1566083941) * mix(total)) & mask
    r4 = (r3 - np.uint64(k % n)) & mask
    words[(k + p) % n] ^= r3
    words[(k + q) % n] ^= r4
    words[k % n] = r4
  return words


def index_shuffle(index: np.ndarray, max_index: int, seed: np.ndarray,
                  rounds: int = 4) -> np.ndarray:
  """`grain.experimental.index_shuffle` of each index with its seed, in NumPy: the position of
  `index` in a permutation of [0, max_index] (a Simon-cipher Feistel network with
  `std::seed_seq` round keys, walked until it lands in range), for many indices at once:
  grain computes one index a Python call, which was most of the input pipeline's time."""
  index = np.asarray(index, np.uint64)
  if max_index == 0:
    return np.zeros_like(index)
  block = max(int(np.ceil(np.log2(max_index))), 16)
  w = (block + block % 2) // 2
  mask = np.uint64((1 << w) - 1)
  rotl = lambda x, r: ((x << np.uint64(r)) | (x >> np.uint64(w - r))) & mask
  simon = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

  def encrypt(value, round_keys):
    left, right = (value >> np.uint64(w)) & mask, value & mask
    for i in range(0, rounds, 2):
      left ^= simon(right) ^ round_keys[i]
      right ^= simon(left) ^ round_keys[i + 1]
    return (left << np.uint64(w)) | right

  domain = 1 << 2 * w
  if np.ndim(seed) == 0 and (max_index + 1) * 8 <= domain:
    # The block is at least 16 bits, so a small range is a sliver of the domain and each index
    # walks about domain / size steps to land in it (thousands of passes for a test's 10
    # examples). Instead: encrypt the whole domain once, then let every value jump to its
    # first successor in range, doubling the stride each pass (at most 2w passes).
    keys = [k & mask for k in _seed_seq(np.asarray(seed, np.uint64)[None], rounds)]
    jump = encrypt(np.arange(domain, dtype=np.uint64), keys)
    landed = jump <= np.uint64(max_index)
    while not landed[:max_index + 1].all():  # Cycles wholly out of range never land.
      jump = np.where(landed, jump, jump[jump])
      landed = jump <= np.uint64(max_index)
    return jump[index].astype(np.int64)
  seeds = np.broadcast_to(np.asarray(seed, np.uint64), index.shape)
  keys = [k & mask for k in _seed_seq(seeds, rounds)]
  out, todo = index.copy(), np.ones(index.shape, bool)
  while todo.any():
    out[todo] = encrypt(out[todo], [k[todo] for k in keys])
    todo = out > np.uint64(max_index)
  return out.astype(np.int64)


_PERMUTATION_MAX_SIZE = 1 << 22  # Examples: larger datasets shuffle a batch's indices only.


def batch_dataset(dataset: Dataset, batch_size: int, seed: int, spec=None) -> grain.IterDataset:
  """Endless, per-epoch reshuffled global batches, of which this process reads its rows: the
  fields of `spec` (a batch spec {field: ShapeDtypeStruct}) in its dtypes, or all fields.

  The order is grain's `MapDataset.range(n).seed(seed).shuffle().repeat()` batched, computed
  a batch at a time (`index_shuffle`) instead of an example at a time through grain.
  """
  rows = sharding.process_batch_slice(batch_size)
  size = dataset.num_examples
  # The seed grain derives for its shuffle (a private attribute: the tests compare these
  # batches with grain's own pipeline, so a grain upgrade that changes it fails them).
  first_seed = grain.MapDataset.range(size).seed(seed).shuffle()._seed  # Epoch e: first + e.

  @functools.lru_cache(maxsize=2)
  def permutation(epoch):
    return index_shuffle(np.arange(size), size - 1, np.uint64((first_seed + epoch) % 2**32))

  def shuffled(epochs, offsets):
    # Small datasets walk the cipher's cycles many times (a block of at least 16 bits for a
    # few thousand indices): once an epoch for all of them, rather than once a batch.
    if size > _PERMUTATION_MAX_SIZE:
      return index_shuffle(offsets, size - 1, (first_seed + epochs) % 2**32)
    return np.concatenate([permutation(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])

  def read(batch_index):
    positions = np.arange(batch_index * batch_size, (batch_index + 1) * batch_size)[rows]
    epochs, offsets = np.divmod(positions, size)
    idx = shuffled(epochs, offsets)
    if dataset.read_augmented is None:
      batch = dataset.read(idx)
    else:
      batch = dataset.read_augmented(idx, epochs, seed)
    if spec is None:
      return batch
    return {name: np.asarray(batch[name], field.dtype) for name, field in spec.items()}

  return (grain.MapDataset.range(sys.maxsize // batch_size)  # Endless.
          .map(read)
          .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def initial_position() -> dict[str, Any]:
  """The data position (`DeviceIterator.state`) of a run that has drawn no batch yet."""
  one = _in_memory("one", np.zeros((1, 1)), np.zeros(1), 0)
  return iter(batch_dataset(one, 1, 0)).get_state()


class DeviceIterator:
  """Global batches on the mesh, produced by a background thread.

  `state` is the grain position after the last batch handed out; it is what a
  checkpoint must store to resume on the next batch.
  """

  def __init__(self, dataset: Dataset, batch_size: int, seed: int, mesh,
               state: dict[str, Any] | None = None, buffer_size: int = 2, spec=None):
    self._iterator = iter(batch_dataset(dataset, batch_size, seed, spec))
    if state is not None:
      self._iterator.set_state(state)
    self.state = self._iterator.get_state()
    self._mesh = mesh
    self._queue = queue.Queue(maxsize=buffer_size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  def _produce(self):
    try:
      while not self._stop.is_set():
        batch = sharding.shard_batch(next(self._iterator), self._mesh)
        item = (batch, self._iterator.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # Re-raised in the consumer, where it can be seen.
      self._queue.put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, Exception):
      raise item
    batch, self.state = item
    return batch

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
