"""Datasets and the input pipeline: contents, determinism, resumption, and the tfds path."""
import itertools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import load_config
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
