"""Evaluation: the metrics an experiment's config names, on demand and during training.

  python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=eval

`make_evaluator(experiment, workdir)` prepares everything that does not depend on the
model (reference features of the evaluation split, cached in the workdir; the feature
extractor; compiled samplers) once, and returns `evaluate(state) -> {metric: value}`.
Metric groups (`config.eval.metrics`):
  modes           2D mixtures: modes captured, % high quality, KL(mode histogram || uniform)
  classifier      gen's domain classifier: Fréchet distance (fd), KID, precision/recall,
                  density/coverage of its features, and the classifier score of samples;
                  for conditional models also label_accuracy, how often the classifier
                  names the class a sample was asked for
  inception       the same on the FID Inception's pool3 features (fid, inception_*) and its
                  Inception score; needs pytorch-fid's weights file (see gen/inception.py)
  likelihood      VAEs: ELBO and the IWAE bound on the evaluation split, nats and bits/dim
  reconstruction  VAEs, VAE-GAN, VQ-VAE: PSNR and SSIM of reconstructions of the evaluation split
"""
import json
import math
import os
import time

import jax
import numpy as np

from gen import UsageError, checkpoint, classifiers, data, metrics, sharding
from gen.steps import vae as vae_steps

METRIC_GROUPS = ("modes", "classifier", "inception", "likelihood", "reconstruction")
HIGHER_IS_BETTER = {"modes", "high_quality", "classifier_score", "label_accuracy", "precision",
                    "recall", "density", "coverage", "elbo", "psnr", "ssim", "inception_score",
                    "inception_precision", "inception_recall", "inception_density",
                    "inception_coverage"}


def _batches(array, batch_size):
  for start in range(0, len(array), batch_size):
    yield array[start:start + batch_size]


def _reference_features(workdir, dataset, images, extract, extractor: str) -> dict:
  """Features of the evaluation split, cached with the extractor's name and version in the name."""
  name = f"reference_{dataset.name}_{dataset.num_examples}_{extractor}.npz"
  path = os.path.join(workdir, "eval", name) if workdir else None
  if path and os.path.exists(path):
    with np.load(path) as cached:
      return dict(cached)
  features = extract(images)
  if path and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **features)
  return features


def _features(predict, images, batch_size: int, mesh) -> dict:
  """{"probabilities", "features"} of images, in fixed-size batches split over the devices."""
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  outputs = []
  for chunk in _batches(images, batch_size):
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
    # Every process holds all images here, so a global array is placed from each copy.
    probabilities, features = predict(jax.device_put(padded, sharding.batch_sharding(mesh)))
    outputs.append((sharding.to_host(probabilities)[:len(chunk)],
                    sharding.to_host(features)[:len(chunk)]))
  return {"probabilities": np.concatenate([p for p, _ in outputs]),
          "features": np.concatenate([f for _, f in outputs]).astype(np.float64)}


def _feature_metrics(reference: dict, fake: dict) -> dict:
  """Fréchet distance, KID, precision/recall, density/coverage and the (classifier) score."""
  score, _ = metrics.inception_score(fake["probabilities"])
  kid, _ = metrics.kernel_inception_distance(reference["features"], fake["features"])
  return {
      "fd": metrics.frechet_distance(*metrics.gaussian_statistics(fake["features"]),
                                     *metrics.gaussian_statistics(reference["features"])),
      "kid": kid,
      "score": score,
      **metrics.precision_recall(reference["features"], fake["features"]),
      **metrics.density_coverage(reference["features"], fake["features"]),
  }


def make_evaluator(experiment, workdir: str | None = None):
  """evaluate(state) -> {metric name: float} for the groups in `config.eval.metrics`."""
  config = experiment.config
  groups = tuple(config.eval.metrics)
  unknown = set(groups) - set(METRIC_GROUPS)
  if unknown:
    raise UsageError(f"config.eval.metrics has unknown groups {sorted(unknown)}; "
                     f"known: {METRIC_GROUPS}.")
  split = data.load(config.dataset, config.eval.split)
  evaluations = []
  sampler = experiment.sampler()

  def samples(state) -> np.ndarray:
    """config.eval.num_samples samples in model space, the same noise at every evaluation."""
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    return sampler(state, config.eval.num_samples, key)

  if "modes" in groups:
    means_fn, std = data.MIXTURES[split.name]

    def modes(state):
      points = samples(state)
      coverage = metrics.mixture_mode_coverage(points, means_fn(), std)
      return {**coverage, "mode_kl": metrics.mixture_mode_histogram_kl(points, means_fn(), std)}

    evaluations.append(modes)

  def feature_group(predict, extractor: str, batch_size: int, rename, label_accuracy=False):
    extract = lambda images: _features(predict, images, batch_size, experiment.mesh)
    real = split.read(np.arange(split.num_examples))["x"]
    reference = _reference_features(workdir, split, real, extract, extractor)

    def feature_metrics(state):
      start = time.perf_counter()
      fake = extract(samples(state))
      throughput = len(fake["features"]) / (time.perf_counter() - start)
      results = {rename(k): v for k, v in _feature_metrics(reference, fake).items()}
      if label_accuracy and experiment.num_classes:
        # The sampler asks for every class in turn.
        requested = experiment.sample_labels(len(fake["probabilities"]))
        accuracy = np.mean(fake["probabilities"].argmax(-1) == requested)
        results[rename("label_accuracy")] = float(accuracy)
      # Sampling and feature extraction together.
      return {**results, rename("eval_images_per_sec"): throughput}

    return feature_metrics

  if "classifier" in groups:
    predict = classifiers.make_predict(classifiers.load_or_train(split.name), split.num_classes)
    evaluations.append(feature_group(
        predict, f"classifier_v{classifiers.VERSION}", 500,
        lambda k: "classifier_score" if k == "score" else k, label_accuracy=True))

  if "inception" in groups:
    from gen import inception  # Its weights are a 95 MB download: only when asked for.
    try:
      extract_inception = inception.make_feature_fn(inception.load_params())
    except FileNotFoundError as e:
      raise UsageError(str(e)) from e

    def predict(images):
      outputs = extract_inception((images + 1.0) / 2.0)
      # The Inception score of Improved-GAN/TTUR takes the softmax of pool3 @ W, no bias.
      return jax.nn.softmax(outputs["logits_unbiased"]), outputs["pool3"]

    evaluations.append(feature_group(
        predict, "inception_2015-12-05", 50,
        lambda k: {"fd": "fid", "score": "inception_score"}.get(k, f"inception_{k}")))

  if "likelihood" in groups:
    bounds = jax.jit(vae_steps.make_bounds(experiment.models, config, config.eval.iwae_samples))
    examples = split.read(np.arange(split.num_examples))
    # A conditional model's bounds are given each example's label: (x, labels) chunks.
    inputs = (examples["x"], examples["label"]) if experiment.num_classes else (examples["x"],)
    dims = math.prod(split.shape)

    def likelihood(state):
      key = jax.random.fold_in(jax.random.key(config.seed), 3)
      elbo, iwae = map(np.concatenate, zip(*[
          jax.device_get(bounds(state, chunk[0], jax.random.fold_in(key, i), *chunk[1:]))
          for i, chunk in enumerate(zip(*[_batches(a, 128) for a in inputs]))]))
      nll = -float(iwae.mean())
      return {"elbo": float(elbo.mean()), "nll_iwae": nll, "bits_per_dim": nll / (dims * math.log(2))}

    evaluations.append(likelihood)

  if "reconstruction" in groups:
    reconstruct = jax.jit(experiment.family.make_reconstruct(experiment.models, config))
    examples = split.read(np.arange(split.num_examples))
    x = examples["x"]
    # A conditional model reconstructs each example given its label: (x, labels) chunks.
    inputs = (x, examples["label"]) if experiment.num_classes else (x,)
    to_unit = lambda images: (np.asarray(images) + 1.0) / 2.0

    def reconstruction(state):
      recon = np.concatenate([np.asarray(reconstruct(state, *chunk))
                              for chunk in zip(*[_batches(a, 128) for a in inputs])])
      return {"psnr": float(np.mean(metrics.psnr(to_unit(x), to_unit(recon)))),
              "ssim": float(np.mean(metrics.ssim(to_unit(x), to_unit(recon))))}

    evaluations.append(reconstruction)

  def evaluate(state) -> dict[str, float]:
    start = time.perf_counter()
    results = {}
    for evaluation in evaluations:
      results.update({k: float(v) for k, v in evaluation(state).items()})
    results["eval_seconds"] = time.perf_counter() - start
    return results

  return evaluate


def write(workdir: str, step: int, results: dict) -> str:
  path = os.path.join(workdir, "eval", f"{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump({"step": step, **results}, f, indent=2)
  return path


class BestCheckpoint:
  """Keeps the checkpoint with the best `metric` so far under <workdir>/checkpoints_best/."""

  def __init__(self, workdir: str, metric: str | None):
    self._metric = metric
    self._record = os.path.join(workdir, "eval", "best.json")
    self._directory = os.path.join(workdir, "checkpoints_best")
    self._checkpointer = None  # Opened at the first save, so that close() is all there is to undo.
    self.value = None
    if metric and os.path.exists(self._record):
      with open(self._record) as f:
        self.value = json.load(f)["value"]

  def update(self, step: int, state, data_state, results: dict) -> bool:
    """Saves `state` when `results[metric]` beats the best so far; returns whether it did."""
    if not self._metric:
      return False
    if self._metric not in results:
      raise UsageError(f"config.eval.best_metric={self._metric!r} is not among the evaluated "
                       f"metrics {sorted(results)}.")
    value = results[self._metric]
    better = max if self._metric in HIGHER_IS_BETTER else min
    if not math.isfinite(value) or (self.value is not None and better(value, self.value) == self.value):
      return False
    self.value = value
    self._checkpointer = self._checkpointer or checkpoint.Checkpointer(self._directory, 1)
    self._checkpointer.save(step, state, data_state)
    if jax.process_index() == 0:
      with open(self._record, "w") as f:
        json.dump({"metric": self._metric, "value": value, "step": step}, f)
    return True

  def close(self):
    if self._checkpointer is not None:
      self._checkpointer.close()


def evaluate_latest(config, workdir: str, mesh=None) -> dict:
  """Restores the latest checkpoint of `workdir`, evaluates it and writes eval/<step>.json."""
  from gen import train  # train imports this module for periodic evaluation.
  experiment = train.build(config, mesh)
  state = train.restore_latest(experiment, workdir)
  results = make_evaluator(experiment, workdir)(state)
  write(workdir, int(state.step), results)
  return {"step": int(state.step), **results}
