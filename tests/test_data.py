"""Datasets and the input pipeline: contents, determinism, resumption, and the tfds path."""
import itertools
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT, cli_env, cycle_gan_config, cycle_gan_images, load_config, mock_cycle_gan
from gen import UsageError, data, sharding


def test_digits_split_is_fixed_disjoint_and_complete():
  train_split, test_split = data.digits("train"), data.digits("test")
  assert (train_split.num_examples, test_split.num_examples) == (1438, 359)
  assert train_split.shape == (8, 8, 1) and train_split.num_classes == 10
  x = train_split.read(np.arange(train_split.num_examples))["x"]
  assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
  test_x = test_split.read(np.arange(test_split.num_examples))["x"]
  # Together the splits are exactly scikit-learn's images, each used once.
  from sklearn.datasets import load_digits
  expected = load_digits().images.reshape(-1, 64) / 16.0 * 2.0 - 1.0
  together = np.concatenate([x, test_x]).reshape(-1, 64)
  np.testing.assert_allclose(np.sort(together.view([("", together.dtype)] * 64), axis=0).view(
      together.dtype), np.sort(expected.astype(np.float32).view([("", np.float32)] * 64), axis=0)
      .view(np.float32), atol=1e-6)
  # The split does not depend on anything but the code: the same rows every call.
  np.testing.assert_array_equal(data.digits("train").read(np.arange(5))["x"], x[:5])


def test_digits_are_scikit_learns_read_without_importing_it():
  from sklearn.datasets import load_digits
  expected = load_digits()
  images, labels = data.load_digits()
  np.testing.assert_array_equal(images, expected.images)
  np.testing.assert_array_equal(labels, expected.target)
  assert images.dtype == expected.images.dtype and labels.dtype == expected.target.dtype
  # scikit-learn's import is seconds of every digits run's start; gen reads its file alone.
  check = ("import sys; from gen import data; data.digits('train'); "
           "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'")
  result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_ring_has_eight_distinct_modes_on_the_circle():
  means = data.ring_means()
  assert means.shape == (8, 2)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0)
  distances = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(8) * 10
  np.testing.assert_allclose(distances.min(), 2 * 2.0 * np.sin(np.pi / 8), rtol=1e-6)


@pytest.mark.parametrize("name, num_modes, std", [("ring2d", 8, 0.02), ("grid2d", 25, 0.05)])
def test_mixture_samples_sit_on_their_modes(name, num_modes, std):
  dataset = data.mixture(name, "train")
  batch = dataset.read(np.arange(20_000))
  means = data.MIXTURES[name][0]()
  assert means.shape == (num_modes, 2)
  if name == "grid2d":
    assert sorted(set(means[:, 0])) == [-4, -2, 0, 2, 4]
  offsets = batch["x"] - means[batch["label"]]
  np.testing.assert_allclose(offsets.std(0), std, rtol=0.05)
  counts = np.bincount(batch["label"], minlength=num_modes)
  assert counts.min() > 0.8 * counts.mean()


def _batches(seed, batch_size=32, count=90):
  dataset = data.digits("train")
  iterator = iter(data.batch_dataset(dataset, batch_size, seed))
  return [b["label"] for b in itertools.islice(iterator, count)]


def test_batches_are_deterministic_reshuffled_per_epoch_and_seed_dependent():
  a, b, c = _batches(0), _batches(0), _batches(1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(a, c))
  # 1438 examples make 44 full batches of 32 and a remainder that spills into the next
  # epoch's first batch; the second epoch is another permutation.
  first, second = np.concatenate(a)[:1438], np.concatenate(a)[1438:2876]
  np.testing.assert_array_equal(np.bincount(first), np.bincount(second))
  assert not np.array_equal(first, second)


@pytest.mark.parametrize("size", [1, 2, 10, 1797, 65537, 100_000, 1_000_003])
def test_index_shuffle_is_grains(size):
  # 65537: the largest index needs a 17th bit of the 16-bit block, which the C++ truncates.
  # Up to 1797 the range is under an eighth of the block: gen encrypts the whole block once
  # and jumps; the larger sizes walk each index as grain does.
  rng = np.random.default_rng(size)
  index = np.unique(np.append(rng.integers(0, size, 40), [0, size - 1]))
  for seed in (0, 7, 2**32 - 1):
    expected = [grain.experimental.index_shuffle(int(i), max_index=size - 1, seed=seed, rounds=4)
                for i in index]
    np.testing.assert_array_equal(data.index_shuffle(index, size - 1, np.uint64(seed)), expected)


@pytest.mark.parametrize("permutation_max_size", [0, 1 << 22])  # Per batch; per epoch.
def test_batches_are_grains_shuffled_stream_batched(permutation_max_size, monkeypatch):
  # The order grain gives an example at a time, batches crossing epoch boundaries.
  monkeypatch.setattr(data, "_PERMUTATION_MAX_SIZE", permutation_max_size)
  size, batch_size, seed = 1438, 100, 5
  dataset = data.digits("train")
  reference = (grain.MapDataset.range(size).seed(seed).shuffle().repeat()
               .map(lambda index: dataset.read(np.array([index]))["label"][0])
               .batch(batch_size, drop_remainder=True))
  batches = iter(data.batch_dataset(dataset, batch_size, seed))
  for k in range(30):  # Two epochs and more.
    np.testing.assert_array_equal(next(batches)["label"], reference[k])


def test_device_iterator_resumes_at_its_saved_state():
  dataset = data.digits("train")
  mesh = sharding.make_mesh(jax.devices())
  first = data.DeviceIterator(dataset, 32, seed=3, mesh=mesh)
  straight = [np.asarray(next(first)["x"]) for _ in range(7)]
  first.close()
  head = data.DeviceIterator(dataset, 32, seed=3, mesh=mesh)
  for _ in range(4):
    batch = next(head)
  assert len(batch["x"].sharding.device_set) == 8
  saved = head.state
  head.close()
  tail = data.DeviceIterator(dataset, 32, seed=3, mesh=mesh, state=saved)
  for expected in straight[4:]:
    np.testing.assert_array_equal(np.asarray(next(tail)["x"]), expected)
  tail.close()


def test_tfds_mnist_through_mock_data():
  with tfds.testing.mock_data(num_examples=64):
    dataset = data.load(load_config("dcgan_mnist").dataset)
    assert dataset.shape == (28, 28, 1) and dataset.num_examples == 64
    assert dataset.num_classes == 10
    batch = dataset.read(np.arange(8))
    assert batch["x"].dtype == np.float32 and batch["x"].shape == (8, 28, 28, 1)
    assert -1.0 <= batch["x"].min() and batch["x"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)


def test_missing_tfds_dataset_names_the_fix(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(tfds, "data_source", offline)
  with pytest.raises(UsageError, match=r"(?s)mnist.*needs the network.*data_dir"):
    data.tfds_images("mnist", "train", str(tmp_path))


# --- tfds's unpaired cycle_gan/* (gen.data.cycle_gan), on mocked splits ---

def find_crop(crop, image):
  """(top, left, flipped) of the size x size window of `image` that `crop` is, or None."""
  size = crop.shape[0]
  for flipped in (False, True):
    window = crop[:, ::-1] if flipped else crop
    for top, left in itertools.product(range(image.shape[0] - size + 1), repeat=2):
      if (np.array_equal(image[top, left:left + size], window[0])
          and np.array_equal(image[top:top + size, left:left + size], window)):
        return top, left, flipped
  return None


def test_resize_image_keeps_an_image_of_the_size_and_maps_to_model_space():
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.resize_image(image, 8), image / np.float32(127.5) - 1)
  resized = data.resize_image(np.full((10, 7, 1), 51, np.uint8), 6)  # Grey: to 3 channels.
  assert resized.shape == (6, 6, 3) and np.allclose(resized, 51 / 127.5 - 1)


def test_cycle_gan_reads_each_domain_from_its_own_split_resized_without_a_crop():
  with mock_cycle_gan():
    train_split = data.load(cycle_gan_config())
    test = data.load(cycle_gan_config(), "test")
  assert train_split.domain_sizes == {"input": 5, "x": 7} and train_split.num_examples == 7
  assert test.domain_sizes == {"input": 6, "x": 8} and test.num_examples == 8
  assert {n: (s.shape, s.dtype) for n, s in train_split.spec.items()} == {
      "input": ((32, 32, 3), np.float32), "x": ((32, 32, 3), np.float32)}
  for split, name in ((train_split, "train"), (test, "test")):
    rows = split.read(np.arange(split.num_examples))
    for field, domain in (("input", "A"), ("x", "B")):
      images = cycle_gan_images(name + domain)
      assert -1.0 <= rows[field].min() and rows[field].max() <= 1.0
      for i, row in enumerate(rows[field]):  # Row i: image i mod N of its domain's split.
        np.testing.assert_array_equal(row, data.resize_image(images[i % len(images)]["image"],
                                                             32))


def test_cycle_gan_training_rows_are_random_crops_and_flips_of_the_286_image():
  """At the paper's sizes: an A image i's training crop is a 256x256 window of it resized to
  286x286, or that window mirrored, at an offset drawn from (seed, epoch, index)."""
  with mock_cycle_gan():
    split = data.load(cycle_gan_config(286, 256))
  resized = data.resize_image(cycle_gan_images("trainA")[1]["image"], 286)
  rows = split.read_augmented(np.array([1, 1, 1]), np.array([0, 1, 0]), 0)["input"]
  assert rows.shape == (3, 256, 256, 3)
  np.testing.assert_array_equal(rows[0], rows[2])  # The same (seed, epoch, index).
  assert find_crop(rows[0], resized) is not None and find_crop(rows[1], resized) is not None
  assert find_crop(rows[0], resized) != find_crop(rows[1], resized)


def test_cycle_gan_crops_flips_and_b_images_vary_over_epochs_and_seeds():
  with mock_cycle_gan():
    split = data.load(cycle_gan_config(36, 32))
  a_images = [data.resize_image(e["image"], 36) for e in cycle_gan_images("trainA")]
  b_images = [data.resize_image(e["image"], 36) for e in cycle_gan_images("trainB")]
  epochs = np.arange(24)
  rows = split.read_augmented(np.full(24, 6), epochs, 0)
  crops, b_indices = [], []
  for a, b in zip(rows["input"], rows["x"]):
    crops.append(find_crop(a, a_images[6 % 5]))  # Row 6 holds A image 1 (of 5).
    found = [(j, find_crop(b, image)) for j, image in enumerate(b_images)]
    found = [(j, crop) for j, crop in found if crop is not None]
    assert len(found) == 1  # A crop of exactly one B image of trainB.
    b_indices.append(found[0][0])
    crops.append(found[0][1])
  assert None not in crops
  tops, lefts, flips = zip(*crops)
  assert set(tops) == set(lefts) == set(range(5))  # Offsets 0..36-32, each seen.
  assert 0.25 < np.mean(flips) < 0.75 and len(set(b_indices)) >= 5
  again = split.read_augmented(np.full(24, 6), epochs, 0)
  other_seed = split.read_augmented(np.full(24, 6), epochs, 1)
  np.testing.assert_array_equal(again["input"], rows["input"])
  np.testing.assert_array_equal(again["x"], rows["x"])
  assert not np.array_equal(other_seed["input"], rows["input"])


def test_cycle_gan_batches_are_the_same_from_the_same_position(single_device_mesh):
  with mock_cycle_gan():
    split = data.load(cycle_gan_config())
  iterator = data.DeviceIterator(split, 2, seed=3, mesh=single_device_mesh)
  # 7 rows: three batches an epoch (the 7th row spills into the next one), then epoch 2's.
  straight = [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(8)]
  iterator.close()
  head = data.DeviceIterator(split, 2, seed=3, mesh=single_device_mesh)
  for _ in range(5):
    next(head)
  saved = head.state
  head.close()
  tail = data.DeviceIterator(split, 2, seed=3, mesh=single_device_mesh, state=saved)
  for expected in straight[5:]:
    batch = next(tail)
    for field in ("input", "x"):
      np.testing.assert_array_equal(np.asarray(batch[field]), expected[field])
  tail.close()
  # Epoch 2 shows the same A images (rows 0-6 again) in other crops than epoch 1.
  a_first = np.concatenate([b["input"] for b in straight[:3]])
  a_second = np.concatenate([b["input"] for b in straight[4:7]])
  assert not any(np.array_equal(x, y) for x in a_first for y in a_second)


@pytest.mark.parametrize("config, message", [
    (cycle_gan_config(32, 36), r"crop_size=36 and load_size=32.*0 < crop_size <= load_size"),
    (cycle_gan_config(), r"(?s)cycle_gan/horse2zebra' \(split 'trainA'\).*needs the network"
                         r".*data_dir"),
])
def test_cycle_gan_bad_sizes_and_missing_data_name_the_fix(config, message, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(tfds, "data_source", offline)
  monkeypatch.setattr(data, "_reachable", lambda: False)
  with pytest.raises(UsageError, match=message):
    data.load(config)
