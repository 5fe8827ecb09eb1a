"""Evaluation: the metrics an experiment's config names, on demand and during training.

  python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=eval

`make_evaluator(experiment, workdir)` prepares everything that does not depend on the
model (reference features of the evaluation split, cached in the workdir; the feature
extractor; compiled samplers) once, and returns `evaluate(state) -> {metric: value}`.
Metric groups (`config.eval.metrics`): the shared ones below, which call the functions a
family provides (gen.families: "generate", "reconstruct"), and a family's own `eval_groups`.
  modes           2D mixtures: modes captured, % high quality, KL(mode histogram || uniform)
  classifier      gen's domain classifier: Fréchet distance (fd), KID, precision/recall,
                  density/coverage of its features, and the classifier score of samples;
                  for conditional models also label_accuracy, how often the classifier
                  names the class a sample was asked for
  inception       the same on the FID Inception's pool3 features (fid, inception_*) and its
                  Inception score; needs pytorch-fid's weights file (see gen/inception.py)
  reconstruction  PSNR and SSIM of reconstructions of the evaluation split
  likelihood      (the VAE family's) ELBO and the IWAE bound, nats and bits/dim
  codes           (the InfoGAN family's) the categorical code's accuracy as a classifier,
                  after matching codes to classes
  translation     (the pix2pix family's) PSNR and SSIM of translations against their
                  targets, and how often a domain classifier reads the input's label in them
  translation_inception  (CycleGAN's) the inception metrics of each direction's
                  translations against the real images of the domain translated to
"""
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gen import UsageError, classifiers, data, metrics, sharding
from gen.families import EvalGroup, median_range, percent


@dataclasses.dataclass
class EvalContext:
  """What an evaluation group is built from.

  Attributes:
    experiment: the gen.experiment.Experiment evaluated.
    split: the evaluation split (`config.eval.split`) of the experiment's dataset.
    workdir: where reference features are cached (None: not cached).
    samples: samples(state) -> (config.eval.num_samples samples in model space, the classes
      they were asked for), from the same noise at every evaluation.
  """
  experiment: Any
  split: data.Dataset
  workdir: str | None
  samples: Callable


def reference_features(workdir, name: str, images, extract, extractor: str) -> dict:
  """`extract(images)` of real images, cached in the workdir under `name` (what they are:
  the dataset, split and count) and the extractor's name and version."""
  file_name = f"reference_{name}_{extractor}.npz".replace("/", "_")
  path = os.path.join(workdir, "eval", file_name) if workdir else None
  if path and os.path.exists(path):
    with np.load(path) as cached:
      return dict(cached)
  features = extract(images)
  if path and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **features)
  return features


def features(predict, images, batch_size: int, mesh) -> dict:
  """{"probabilities", "features"} of images, in fixed-size batches split over the devices."""
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  outputs = []
  for chunk in data.chunks(images, batch_size):
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
    # Every process holds all images here, so a global array is placed from each copy.
    probabilities, features = predict(jax.device_put(padded, sharding.batch_sharding(mesh)))
    outputs.append((sharding.to_host(probabilities)[:len(chunk)],
                    sharding.to_host(features)[:len(chunk)]))
  return {"probabilities": np.concatenate([p for p, _ in outputs]),
          "features": np.concatenate([f for _, f in outputs]).astype(np.float64)}


def feature_metrics(reference: dict, fake: dict, score: bool = True) -> dict:
  """Fréchet distance, KID, precision/recall, density/coverage and (with `score`) the
  (classifier) score."""
  kid, _ = metrics.kernel_inception_distance(reference["features"], fake["features"])
  results = {
      "fd": metrics.frechet_distance(*metrics.gaussian_statistics(fake["features"]),
                                     *metrics.gaussian_statistics(reference["features"])),
      "kid": kid,
      **metrics.precision_recall(reference["features"], fake["features"]),
      **metrics.density_coverage(reference["features"], fake["features"]),
  }
  if score:
    results["score"] = metrics.inception_score(fake["probabilities"])[0]
  return results


def matched_precision_recall(reference: dict, fake: dict, size: int) -> dict:
  """{"matched_precision", "matched_recall"}: precision and recall of the fakes in disjoint
  subsets of `size`, averaged; {} when the fakes hold no such subset.

  Recall's balls are the fakes' k-th-neighbour radii, which shrink as the fakes grow in
  number: the same generator's recall of the test split is 0.80 at 10,000 digits samples and
  0.89 at 1,438 (dcgan_digits, 10,000 steps). A real split scored as samples (the floor of
  gen.results) is comparable only at its own size.
  """
  subsets = len(fake["features"]) // size
  if not subsets:
    return {}
  scores = [metrics.precision_recall(reference["features"],
                                     fake["features"][i * size:(i + 1) * size])
            for i in range(subsets)]
  return {f"matched_{name}": float(np.mean([score[name] for score in scores]))
          for name in ("precision", "recall")}


def _modes(context):
  if context.split.name not in data.MIXTURES:
    raise UsageError(f"The modes group needs a 2D mixture ({sorted(data.MIXTURES)}); "
                     f"{context.split.name} is not one.")
  means_fn, std = data.MIXTURES[context.split.name]

  def modes(state):
    points, _ = context.samples(state)
    coverage = metrics.mixture_mode_coverage(points, means_fn(), std)
    return {**coverage, "mode_kl": metrics.mixture_mode_histogram_kl(points, means_fn(), std)}

  return modes


def _feature_group(context, predict, extractor: str, batch_size: int, rename,
                   label_accuracy: bool = False):
  experiment, split = context.experiment, context.split
  extract = lambda images: features(predict, images, batch_size, experiment.mesh)
  real = split.read(np.arange(split.num_examples))["x"]
  reference = reference_features(context.workdir, f"{split.name}_{split.num_examples}", real,
                                 extract, extractor)

  def evaluate_features(state):
    start = time.perf_counter()
    images, requested = context.samples(state)
    fake = extract(images)
    throughput = len(fake["features"]) / (time.perf_counter() - start)
    results = {rename(k): v for k, v in feature_metrics(reference, fake).items()}
    # At the training split's size too: the floor scores that split as samples.
    matched = matched_precision_recall(reference, fake, experiment.dataset.num_examples)
    results.update({rename(k): v for k, v in matched.items()})
    if label_accuracy and experiment.num_classes:
      accuracy = np.mean(fake["probabilities"].argmax(-1) == requested)
      results[rename("label_accuracy")] = float(accuracy)
    # Sampling and feature extraction together.
    return {**results, rename("eval_images_per_sec"): throughput}

  return evaluate_features


def _classifier(context):
  split = context.split
  predict = classifiers.make_predict(classifiers.load_or_train(split.name), split.num_classes)
  return _feature_group(context, predict, f"classifier_v{classifiers.VERSION}", 500,
                        lambda k: "classifier_score" if k == "score" else k, label_accuracy=True)


INCEPTION = "inception_2015-12-05"  # The extractor's name in cached reference features.
INCEPTION_BATCH = 50


def inception_predict():
  """predict(images [B, H, W, C] in model space) -> (Inception-score probabilities, pool3
  features) of the FID Inception; UsageError naming the weights file and how to fetch it
  when it is missing (groups call this when built, before a run's first step)."""
  from gen import inception  # Its weights are a 95 MB download: only when asked for.
  try:
    extract_inception = inception.make_feature_fn(inception.load_params())
  except FileNotFoundError as e:
    raise UsageError(str(e)) from e

  def predict(images):
    outputs = extract_inception(data.to_unit_range(images))
    # The Inception score of Improved-GAN/TTUR takes the softmax of pool3 @ W, no bias.
    return jax.nn.softmax(outputs["logits_unbiased"]), outputs["pool3"]

  return predict


def inception_name(metric: str) -> str:
  """The name of `feature_metrics`' `metric` on Inception features: fid, inception_score,
  inception_<metric>."""
  return {"fd": "fid", "score": "inception_score"}.get(metric, f"inception_{metric}")


def _inception(context):
  return _feature_group(context, inception_predict(), INCEPTION, INCEPTION_BATCH, inception_name)


def _reconstruction(context):
  experiment, split = context.experiment, context.split
  reconstruct = jax.jit(experiment.functions["reconstruct"])
  examples = split.read(np.arange(split.num_examples))
  x = examples["x"]
  # A conditional model reconstructs each example given its label: (x, labels) chunks.
  inputs = (x, examples["label"]) if experiment.num_classes else (x,)

  def reconstruction(state):
    recon = np.concatenate([np.asarray(reconstruct(state, *chunk))
                            for chunk in zip(*[data.chunks(a, 128) for a in inputs])])
    real, recon = data.to_unit_range(x), data.to_unit_range(recon)
    return {"psnr": float(np.mean(metrics.psnr(real, recon))),
            "ssim": float(np.mean(metrics.ssim(real, recon)))}

  return reconstruction


def _modes_summary(v):
  return (f"{median_range(v['modes'])} modes, {median_range(v['high_quality'], 1, '%')} high "
          f"quality") if "modes" in v else ""


def _classifier_summary(v):
  parts = []
  if "label_accuracy" in v:
    parts.append(f"{median_range(percent(v['label_accuracy']), 1, '%')} of samples are the "
                 f"requested digit")
  if "fd" in v:
    parts.append(f"classifier FD {median_range(v['fd'])}, precision "
                 f"{median_range(v['precision'], 2)}, recall {median_range(v['recall'], 2)}")
    if "matched_recall" in v:
      parts.append(f"at the training split's size precision "
                   f"{median_range(v['matched_precision'], 2)}, recall "
                   f"{median_range(v['matched_recall'], 2)}")
  return "; ".join(parts)


def _inception_summary(v):
  return (f"FID {median_range(v['fid'])}, Inception score {median_range(v['inception_score'], 2)}"
          if "fid" in v else "")


def _reconstruction_summary(v):
  return (f"reconstruction PSNR {median_range(v['psnr'])} dB, SSIM {median_range(v['ssim'], 3)}"
          if "ssim" in v else "")


FEATURE_METRICS = {"precision", "recall", "density", "coverage"}  # Besides the score.
GROUPS = {
    "modes": EvalGroup(_modes, ("generate",), frozenset({"modes", "high_quality"}),
                       _modes_summary),
    "classifier": EvalGroup(_classifier, ("generate",), frozenset(
        {"classifier_score", "label_accuracy", *FEATURE_METRICS}), _classifier_summary),
    "inception": EvalGroup(_inception, ("generate",), frozenset(
        {"inception_score", *(f"inception_{k}" for k in FEATURE_METRICS)}), _inception_summary),
    "reconstruction": EvalGroup(_reconstruction, ("reconstruct",), frozenset({"psnr", "ssim"}),
                                _reconstruction_summary),
}


def available_groups(family) -> dict[str, EvalGroup]:
  """gen's groups and the family's own (which replace gen's of the same name)."""
  return {**GROUPS, **family.eval_groups}


def groups(experiment) -> dict[str, EvalGroup]:
  """The groups of `config.eval.metrics`, checked: known, and given the functions they need."""
  available = available_groups(experiment.family)
  chosen = {}
  for name in experiment.config.eval.metrics:
    if name not in available:
      raise UsageError(f"config.eval.metrics has the unknown group {name!r}; for a model of "
                       f"the {experiment.family.name} family: {sorted(available)}.")
    missing = [f for f in available[name].needs if f not in experiment.functions]
    if missing:
      raise UsageError(f"config.eval.metrics: the {name!r} group needs the function(s) "
                       f"{missing}, which the {experiment.family.name} family does not have.")
    chosen[name] = available[name]
  return chosen


def higher_is_better(experiment, metric: str) -> bool:
  """Whether a larger value of `metric` is better, as the group computing it says."""
  return any(metric in group.higher_is_better for group in groups(experiment).values())


def make_evaluator(experiment, workdir: str | None = None):
  """evaluate(state) -> {metric name: float} for the groups in `config.eval.metrics`."""
  config = experiment.config
  chosen = groups(experiment)
  split = data.load(config.dataset, config.eval.split)
  sampler = experiment.sampler() if "generate" in experiment.functions else None

  def samples(state):
    """config.eval.num_samples samples in model space, the same noise at every evaluation, and
    the classes they were asked for (every class in turn)."""
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    num = config.eval.num_samples
    return sampler(state, num, key), experiment.sample_labels(num)

  context = EvalContext(experiment, split, workdir, samples)
  evaluations = [group.make(context) for group in chosen.values()]

  def evaluate(state) -> dict[str, float]:
    start = time.perf_counter()
    results = {}
    for evaluation in evaluations:
      results.update({k: float(v) for k, v in evaluation(state).items()})
    results["eval_seconds"] = time.perf_counter() - start
    return results

  return evaluate


def evaluate_latest(config, workdir: str, mesh=None) -> dict:
  """Restores the latest checkpoint of `workdir`, evaluates it and writes eval/<step>.json."""
  from gen import experiment as experiment_lib, writers
  experiment = experiment_lib.build(config, mesh, workdir)
  state = experiment_lib.restore_latest(experiment, workdir)
  results = make_evaluator(experiment, workdir)(state)
  writers.write_eval(workdir, int(state.step), results)
  return {"step": int(state.step), **results}
