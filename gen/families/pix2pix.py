"""The pix2pix family (Isola et al. 2017): paired image-to-image translation with a
conditional GAN.

A generator G (gen.models.pix2pix's U-Net) translates an input image a into an output G(a),
and a discriminator D (the PatchGAN) scores (input, image) pairs, concatenated on the
channels, one logit per patch. Each step trains D on real pairs (a, b) against (a, G(a)),
then G on

  L_G = w_adv · L_adv(D(a, G(a))) + λ · mean |b − G(a)|,

the L1 distance averaged over the pixels and channels in model space ([-1, 1]), as the paper's
code computes it, with λ `config.pix2pix.l1_weight` (100, the paper's) and w_adv
`adversarial_weight` (1). The adversarial losses, R1 and WGAN-GP penalties, DiffAugment
(applied alike to both images of a pair), spectral normalisation and the generator's EMA come
from `config.gan` through gen.families.gan's discriminator side (n_critic must be 1: one pair
batch a step; R1 and WGAN-GP take D's gradient with respect to the whole pair, whose input
half is the same in real and fake pairs). The paper's dropout is G's only noise, kept on when translating
(`config.pix2pix.inference_dropout`); BatchNorm uses its running averages there.

Data: a paired dataset, whose examples hold "input" (a) and "x" (the target b), e.g.
`edges2digits`. Snapshots show input, output and target side by side; `--mode=sample`
translates the evaluation split's inputs, or those of `--input=FILE.npz`; the `translation`
evaluation group scores G(a) against b (PSNR, SSIM) and by the label a domain classifier
reads in it.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen import UsageError, checks, data, metrics, sharding, writers
from gen.families import (EvalGroup, ModuleState, TrainState, init_variables, median_range,
                          num_classes, options_block, percent)
from gen.families import gan as gan_family
from gen.families.gan import make_optimizers  # noqa: F401

_SNAPSHOT_EXAMPLES, _SNAPSHOT_COLUMNS = 32, 4  # 8 rows of 4 (input, output, target) triplets.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.pix2pix`: the generator's objective and how it translates."""
  return options_block("pix2pix", {
      "l1_weight": 100.0,  # λ of the L1 distance to the target.
      "adversarial_weight": 1.0,  # Of the GAN loss (config.gan.loss) in G's objective.
      "inference_dropout": True,  # Dropout stays on when translating, as in the paper.
  }, overrides)


def validate(config):
  gan_family.validate(config)
  if "pix2pix" not in config:
    raise UsageError("This model needs config.pix2pix (see gen.families.pix2pix.options).")
  if config.gan.n_critic != 1:
    raise UsageError(f"config.gan.n_critic={config.gan.n_critic}: pix2pix trains D once a step, "
                     f"on the step's pairs; set config.gan.n_critic=1.")
  if num_classes(config) or config.model.get("conditioning", "none") != "none":
    raise UsageError("pix2pix is conditioned on its input image, not on a class: set "
                     "config.model.num_classes=0 and conditioning 'none'.")
  options_ = config.pix2pix
  for key in ("l1_weight", "adversarial_weight"):
    checks.in_range(options_[key], f"pix2pix.{key}", 0.0, float("inf"))
  if not options_.l1_weight and not options_.adversarial_weight:
    raise UsageError("config.pix2pix.l1_weight and adversarial_weight are both 0: the "
                     "generator would have no objective.")
  check_penalties_and_norm(config)


def check_penalties_and_norm(config) -> None:
  """UsageError for R1 or WGAN-GP with a BatchNorm discriminator (shared with CycleGAN)."""
  if config.model.get("discriminator_norm") == "batch" and (config.gan.r1 or
                                                            config.gan.gradient_penalty):
    raise UsageError("config.gan.r1 and gradient_penalty are per-example input gradients, which "
                     "a BatchNorm discriminator mixes across the batch: set "
                     "config.model.discriminator_norm to 'instance' or 'none'.")


def batch_spec(config, dataset) -> dict:
  """The input images "input" and their targets "x"."""
  if "input" not in dataset.spec:
    raise UsageError(f"pix2pix needs paired data, examples with an 'input' image and its target "
                     f"'x'; {dataset.name} has only {sorted(dataset.spec)}: use e.g. "
                     f"--config.dataset.name=edges2digits.")
  if dataset.domain_sizes:
    raise UsageError(f"pix2pix learns from pairs, and {dataset.name} is unpaired (its 'input' "
                     f"and 'x' are unrelated): train CycleGAN on it (model.name=cyclegan, e.g. "
                     f"experiments/cyclegan_horse2zebra.py).")
  return {"input": dataset.spec["input"], "x": dataset.spec["x"]}


def pair(inputs: jax.Array, images: jax.Array) -> jax.Array:
  """What D sees: the input beside an image (the target or G's output), on the channels."""
  return jnp.concatenate([inputs, images.astype(inputs.dtype)], axis=-1)


def init_state(models, optimizers, config, spec, key) -> TrainState:
  g_key, d_key, rng = jax.random.split(key, 3)
  inputs, targets = jnp.zeros((1, *spec["input"].shape)), jnp.zeros((1, *spec["x"].shape))
  g_params, g_stats = init_variables(models["generator"], g_key, inputs, train=False)
  d_params, d_stats = init_variables(models["discriminator"], d_key, pair(inputs, targets), None,
                                     train=False)
  return TrainState.create(rng, {
      "generator": ModuleState.create(g_params, optimizers["generator"], g_stats,
                                      ema=bool(config.gan.ema_decay)),
      "discriminator": ModuleState.create(d_params, optimizers["discriminator"], d_stats)})


def l1_distance(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """mean |targets − outputs| over every pixel and channel of the batch."""
  return jnp.mean(jnp.abs(targets.astype(jnp.float32) - outputs.astype(jnp.float32)))


def generator_loss(fake_logits, outputs, targets, adversarial_loss, l1_weight: float,
                   adversarial_weight: float = 1.0):
  """(L_G, {"g_adversarial", "g_l1"}): w_adv · adversarial_loss(D's patch logits for the
  outputs' pairs) + λ · l1_distance(outputs, targets)."""
  adversarial = adversarial_loss(fake_logits)
  l1 = l1_distance(outputs, targets)
  return (adversarial_weight * adversarial + l1_weight * l1,
          {"g_adversarial": adversarial, "g_l1": l1})


def make_train_step(models, optimizers, config):
  generator, options_ = models["generator"], config.pix2pix

  def train_step(state: TrainState, batch, rng):
    """batch {"input" [B, H, W, C_in], "x" [B, H, W, C]} in [-1, 1] -> (state, metrics)."""
    inputs, targets = batch["input"], batch["x"]
    # Built while tracing, where the pair's channel counts are the batch's static shapes.
    discriminate, d_update, adversarial_loss = gan_family.make_discriminator(
        models["discriminator"], optimizers["discriminator"], config,
        image_channels=(inputs.shape[-1], targets.shape[-1]))
    dropout_key, d_key, g_key = jax.random.split(rng, 3)
    g = state.modules["generator"]

    def translate(g_params):
      outputs, updates = generator.apply(g.variables(g_params), inputs, train=True,
                                         rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      return outputs, updates.get("batch_stats", {})

    # One generator pass serves both updates: D trains on its outputs, and G's gradient is
    # pulled back through the same pass with its VJP.
    outputs, generator_vjp, g_stats = jax.vjp(translate, g.params, has_aux=True)
    d, d_metrics = d_update(state.step, state.modules["discriminator"], pair(inputs, targets),
                            None, pair(inputs, jax.lax.stop_gradient(outputs)), None, d_key)

    def g_loss_fn(outputs):
      logits, _, _ = discriminate(d.params, d.batch_stats, pair(inputs, outputs), None, g_key)
      return generator_loss(logits, outputs, targets, adversarial_loss, options_.l1_weight,
                            options_.adversarial_weight)

    (g_loss, g_metrics), outputs_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(outputs)
    (g_grads,) = generator_vjp(outputs_grad)
    g = g.apply_gradients(optimizers["generator"], g_grads, g_stats)
    g = g.update_ema(gan_family.ema_decay(config.gan.ema_decay, state.step))
    return state.next(generator=g, discriminator=d), {**d_metrics, "g_loss": g_loss, **g_metrics}

  return train_step


# --- Translating ---

def make_translate(models, config):
  """translate(state, inputs [B, H, W, C_in] in model space, key) -> outputs [B, H, W, C]:
  the generator's EMA weights where kept, BatchNorm's running averages, and dropout drawn
  from `key` where config.pix2pix.inference_dropout is set."""
  generator = models["generator"]
  noise = bool(config.pix2pix.inference_dropout)

  def translate(state: TrainState, inputs, key):
    g = state.modules["generator"]
    return generator.apply(g.variables(g.sampling_params), inputs, train=False,
                           dropout_noise=noise, rngs={"dropout": key})

  return translate


def make_functions(models, config):
  return {"translate": make_translate(models, config)}


# Translation keeps no state between images (BatchNorm's running averages at inference), so it
# runs in batches larger than training's small ones (CycleGAN's 8): a few calls, not dozens.
TRANSLATE_BATCH = 128


def translator(experiment, function: str = "translate"):
  """translate(state, inputs [N, ...] NumPy in model space, key) -> NumPy outputs [N, ...]:
  the family's function `function` (translate(state, inputs, key)), compiled once, in
  batches of TRANSLATE_BATCH (at least the config's batch size, a multiple of the device
  count) over the mesh (`Experiment.in_batches`); batch i's dropout uses fold_in(key, i)."""
  batched = sharding.batch_sharding(experiment.mesh)
  translate = experiment.jit(experiment.functions[function], out_shardings=batched)
  devices = experiment.mesh.size
  batch_size = max(experiment.config.batch_size, -(-TRANSLATE_BATCH // devices) * devices)
  in_batches = experiment.in_batches(lambda state, key, inputs: translate(state, inputs, key),
                                     batch_size)
  return lambda state, inputs, key: in_batches(state, key, np.asarray(inputs, np.float32))


def _read_inputs(path: str, shape) -> np.ndarray:
  """The images of `--input`, an .npz's `inputs` (or only) array [N, *shape] in [0, 1]."""
  if not os.path.isfile(path):
    raise UsageError(f"--input={path}: no such file; give an .npz whose 'inputs' array holds "
                     f"images [N, {', '.join(map(str, shape))}] in [0, 1].")
  with np.load(path) as saved:
    names = list(saved.keys())
    if "inputs" not in names and len(names) != 1:
      raise UsageError(f"--input={path} holds {names}; pix2pix reads its 'inputs' array.")
    images = np.asarray(saved["inputs" if "inputs" in names else names[0]], np.float32)
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or not len(images):
    raise UsageError(f"--input={path}: the images are {images.shape}; this model translates "
                     f"[N, {', '.join(map(str, shape))}].")
  if images.min() < 0.0 or images.max() > 1.0:
    raise UsageError(f"--input={path}: values in [{images.min():g}, {images.max():g}]; give "
                     f"images in [0, 1], as --mode=sample writes them.")
  return images


sample_flags = {
    "input": ("string", None, "--mode=sample, pix2pix: an .npz whose 'inputs' array holds the "
                              "images [N, H, W, C] in [0, 1] to translate (as --mode=sample "
                              "writes them); default: the evaluation split's inputs."),
}


def make_sampler(experiment, num_samples: int, input: str | None = None):  # noqa: A002
  """{"samples": the translations in [0, 1], "inputs": what they translate} of the first
  `num_samples` inputs of `input` (an .npz), or of config.eval.split (then also "targets"
  and "labels")."""
  return translation_sampler(experiment, num_samples, input)


def translation_sampler(experiment, num_samples: int, input: str | None = None,  # noqa: A002
                        function: str = "translate", inputs: str = "input", targets: str = "x"):
  """make_sampler's sampler for the family's `function`, translating the data's `inputs`
  field (scored against `targets`, where the split is paired): CycleGAN samples both of its
  directions with it."""
  config = experiment.config
  if input:
    examples = {inputs: _read_inputs(input, experiment.spec[inputs].shape)[:num_samples] * 2 - 1}
  else:
    split = data.load(config.dataset, config.eval.split)
    available = (split.domain_sizes or {}).get(inputs, split.num_examples)
    examples = split.read(np.arange(min(num_samples, available)))
    if split.domain_sizes:  # Unpaired: the rows' other images are no targets.
      examples = {inputs: examples[inputs]}
  translate = translator(experiment, function)

  def sampler(state, key):
    outputs = translate(state, examples[inputs], key)
    samples = {"samples": writers.to_unit_range(outputs.astype(np.float32)),
               "inputs": writers.to_unit_range(np.asarray(examples[inputs], np.float32))}
    if targets in examples:
      samples.update(targets=writers.to_unit_range(np.asarray(examples[targets], np.float32)),
                     labels=np.asarray(examples["label"], np.int32))
    return samples

  return sampler


# --- Snapshots ---

def snapshot_batch(config, dataset) -> dict[str, np.ndarray]:
  """The first training pairs, as many as the grid shows."""
  examples = dataset.read(np.arange(min(_SNAPSHOT_EXAMPLES, dataset.num_examples)))
  return {"input": examples["input"], "x": examples["x"]}


def _with_channels(images: jax.Array, channels: int) -> jax.Array:
  """images drawn with `channels` channels: repeated where they have one, else their mean."""
  if images.shape[-1] == channels:
    return images
  gray = images if images.shape[-1] == 1 else images.mean(axis=-1, keepdims=True)
  return jnp.repeat(gray, channels, axis=-1)


def make_snapshots(models, config):
  translate = make_translate(models, config)

  def snapshots(state: TrainState, batch, key):
    """"samples": input, output and target of each pair in a row, [3N, H, W, C]."""
    inputs, targets = batch["input"], batch["x"]
    outputs = translate(state, inputs, key)
    triplets = jnp.stack([_with_channels(inputs, targets.shape[-1]), outputs, targets], axis=1)
    return {"samples": triplets.reshape(-1, *targets.shape[1:])}

  return snapshots


def render_snapshots(outputs, batch) -> dict:
  return {name: writers.image_grid(np.asarray(values), columns=3 * _SNAPSHOT_COLUMNS)
          for name, values in outputs.items()}


# --- Evaluation ---

def translation_metrics(outputs, targets) -> dict[str, float]:
  """Mean PSNR (dB) and SSIM of outputs against targets [N, H, W, C] in model space, both
  taken to [0, 1] first (gen.metrics's functions, as the reconstruction group)."""
  outputs, targets = data.to_unit_range(outputs), data.to_unit_range(targets)
  return {"psnr": float(np.mean(metrics.psnr(targets, outputs))),
          "ssim": float(np.mean(metrics.ssim(targets, outputs)))}


def average_pool(images: np.ndarray, factor: int) -> np.ndarray:
  """[N, H, W, C] -> [N, H/factor, W/factor, C]: the mean of each factor x factor block."""
  n, h, w, c = images.shape
  return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _pooling_factor(shape, classifier_shape, classifier: str) -> int:
  """How much images of `shape` shrink to the classifier's size; UsageError if not evenly."""
  factor = shape[0] // classifier_shape[0]
  if (factor < 1 or tuple(shape) != (classifier_shape[0] * factor, classifier_shape[1] * factor,
                                     classifier_shape[2])):
    raise UsageError(f"config.eval.classifier={classifier!r} reads images {classifier_shape}, "
                     f"which {tuple(shape)} cannot be average-pooled to.")
  return factor


def translation_evaluation(function: str = "translate", inputs: str = "input",
                           targets: str = "x", readable=None, prefix: str = ""):
  """make(context) -> evaluate(state) of a translation group: the family's `function`
  applied to the evaluation split's `inputs`, scored against its `targets` (pix2pix's
  `translation` is the defaults; CycleGAN scores its two directions with two of these).

  Metrics, each named with `prefix`: psnr and ssim of the outputs against the targets; with
  config.eval.classifier, label_preservation: how often that gen classifier, given an output
  (made `readable(images)` first where given: images in model space of the classifier's
  channels) average-pooled to its image size, names the example's label, beside
  target_label_accuracy, the same for the targets (the ceiling)."""

  def make(context):
    from gen import classifiers, evaluate  # gen.evaluate builds on the families, not they on it.
    experiment, split = context.experiment, context.split
    config = experiment.config
    if split.domain_sizes:
      raise UsageError(f"config.eval.metrics: the translation group scores translations "
                       f"against their true targets, which {split.name}, unpaired, does not "
                       f"have; CycleGAN's 'translation_inception' and 'cycle' groups need none.")
    batch_spec(config, split)
    examples = split.read(np.arange(split.num_examples))
    translate = translator(experiment, function)
    classifier = config.eval.get("classifier", "")
    classify = None
    if classifier:
      if not split.num_classes:
        raise UsageError(f"config.eval.classifier={classifier!r}, but {split.name} has no "
                         f"labels to preserve: set it to ''.")
      reference = data.load(ml_collections.ConfigDict({"name": classifier, "split": "test"}))
      view = (lambda images: images) if readable is None else readable
      shape = view(examples[targets][:1]).shape[1:]
      factor = _pooling_factor(shape, reference.shape, classifier)
      predict = classifiers.make_predict(classifiers.load_or_train(classifier), split.num_classes)

      def classify(images):
        pooled = average_pool(np.asarray(view(np.asarray(images, np.float32)), np.float32),
                              factor)
        return evaluate.features(predict, pooled, 500,
                                 experiment.mesh)["probabilities"].argmax(-1)

      target_accuracy = float(np.mean(classify(examples[targets]) == examples["label"]))

    def translation(state):
      key = jax.random.fold_in(jax.random.key(config.seed), 4)
      outputs = translate(state, examples[inputs], key)
      results = translation_metrics(outputs, examples[targets])
      if classify is not None:
        results["label_preservation"] = float(np.mean(classify(outputs) == examples["label"]))
        results["target_label_accuracy"] = target_accuracy
      return {prefix + name: value for name, value in results.items()}

    return translation

  return make


TRANSLATION_METRICS = frozenset({"psnr", "ssim", "label_preservation", "target_label_accuracy"})


def translation_summary(values, prefix: str = "") -> str:
  """The results tables' phrase for translation_evaluation(prefix)'s metrics over seeds."""
  v = {name[len(prefix):]: x for name, x in values.items() if name.startswith(prefix)}
  if "ssim" not in v:
    return ""
  text = f"test SSIM {median_range(v['ssim'], 3)}, PSNR {median_range(v['psnr'])} dB"
  if "label_preservation" in v:
    text += (f", label preservation {median_range(percent(v['label_preservation']), 1, '%')} "
             f"(ceiling {median_range(percent(v['target_label_accuracy']), 1, '%')})")
  return text


eval_groups = {
    "translation": EvalGroup(translation_evaluation(), ("translate",), TRANSLATION_METRICS,
                             translation_summary),
}
