"""Domain classifiers that gen trains itself, for data where Inception features mean nothing.

  python -m gen.classifiers digits      # seconds on 2 CPU cores
  python -m gen.classifiers mnist       # needs MNIST from tfds

A classifier's penultimate features feed Fréchet distance, KID and precision/recall; its
softmax gives a classifier score and the accuracy of conditional samples. Trained weights
are cached under ~/.cache/gen/classifiers/, named by dataset and version, and trained on
first use when missing.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization

from gen import data
from gen.models.classifier import Classifier

VERSION = 1  # Bump when the network or its training changes: cached files are then ignored.
CACHE_DIR = os.path.expanduser("~/.cache/gen/classifiers")
_STEPS = {"digits": 1500, "mnist": 3000}


def weights_path(dataset: str) -> str:
  return os.path.join(CACHE_DIR, f"{dataset}_v{VERSION}.msgpack")


def _dataset(name: str, split: str) -> data.Dataset:
  return data.load(ml_collections.ConfigDict({"name": name, "split": split}))


def _shift(images, key, max_shift: int = 1):
  """Random translations by up to `max_shift` pixels, padding with the background (-1)."""
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                   constant_values=-1.0)
  offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def train(dataset: str, seed: int = 0, batch_size: int = 128) -> tuple[dict, float]:
  """Trains the classifier of `dataset`; returns (params, test accuracy)."""
  train_split, test_split = _dataset(dataset, "train"), _dataset(dataset, "test")
  model = Classifier(num_classes=train_split.num_classes)
  key = jax.random.key(seed)
  params = model.init(key, jnp.zeros((1, *train_split.shape)))["params"]
  steps = _STEPS.get(dataset, 3000)
  optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    shift_key, dropout_key = jax.random.split(key)
    images = _shift(batch["x"], shift_key)

    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, train=True,
                              rngs={"dropout": dropout_key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batches = iter(data.batch_dataset(train_split, batch_size, seed))
  for i in range(steps):
    params, opt_state = step(params, opt_state, next(batches), jax.random.fold_in(key, i))
  return params, accuracy(params, test_split)


def accuracy(params, dataset: data.Dataset) -> float:
  predict = make_predict(params, dataset.num_classes)
  batch = dataset.read(np.arange(dataset.num_examples))
  probabilities, _ = predict(batch["x"])
  return float(np.mean(np.argmax(probabilities, -1) == batch["label"]))


def make_predict(params, num_classes: int = 10):
  """A jitted images [B, H, W, C] in [-1, 1] -> (probabilities [B, K], features [B, D])."""
  model = Classifier(num_classes=num_classes)

  @jax.jit
  def predict(images):
    logits, features = model.apply({"params": params}, images)
    return jax.nn.softmax(logits), features

  return predict


def load_or_train(dataset: str) -> dict:
  """The cached classifier of `dataset`, trained and saved first if there is none."""
  path = weights_path(dataset)
  if not os.path.exists(path):
    params, test_accuracy = train(dataset)
    save(dataset, params, test_accuracy)
  split = _dataset(dataset, "train")
  template = Classifier(num_classes=split.num_classes).init(
      jax.random.key(0), jnp.zeros((1, *split.shape)))["params"]
  with open(path, "rb") as f:
    return serialization.from_bytes(template, f.read())


def save(dataset: str, params, test_accuracy: float) -> str:
  os.makedirs(CACHE_DIR, exist_ok=True)
  path = weights_path(dataset)
  # A name of this process's own, so that parallel test workers never share a partial file.
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(serialization.to_bytes(params))
  os.replace(tmp, path)  # Never a half-written file under the real name.
  with open(path[:-len(".msgpack")] + ".json", "w") as f:
    json.dump({"dataset": dataset, "version": VERSION, "test_accuracy": test_accuracy}, f)
  return path


def main(argv):
  if len(argv) != 2:
    sys.exit("usage: python -m gen.classifiers digits|mnist")
  params, test_accuracy = train(argv[1])
  path = save(argv[1], params, test_accuracy)
  print(f"{argv[1]} classifier: test accuracy {100 * test_accuracy:.2f}%, saved to {path}")


if __name__ == "__main__":
  main(sys.argv)
