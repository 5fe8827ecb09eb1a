"""The CycleGAN family (Zhu et al. 2017): unpaired image-to-image translation.

Two generators, G: A → B ("generator") and F: B → A ("inverse_generator"), and two
discriminators, D_B ("discriminator": B's images against G's) and D_A
("inverse_discriminator": A's against F's), from gen.models.cyclegan. Each step trains both
discriminators on the step's real images against fakes from their history pools (below),
then both generators on

  L = w_adv · (L_adv(D_B(G(a))) + L_adv(D_A(F(b))))
      + λ · (|F(G(a)) − a|₁ + |G(F(b)) − b|₁) + w_id · λ · (|G(b) − b|₁ + |F(a) − a|₁),

each |·|₁ the mean absolute difference over pixels and channels in model space ([-1, 1]),
with λ `config.cyclegan.cycle_weight` (10, the paper's) and w_id `identity_weight` (0.5, the
paper's; 0 leaves the identity terms out). L_adv is config.gan.loss's generator loss:
"least_squares" in the paper; gen's is ½(D − 1)², half the paper's code's MSE, so
`adversarial_weight` 2 is the paper's balance. Spectral normalisation, R1 and WGAN-GP,
DiffAugment and the generators' EMA come from config.gan through gen.families.gan's
discriminator side; n_critic must be 1 (one batch of each domain a step). As in gen's other
GAN steps, the generators are scored by the discriminators just updated.

History pool (`config.cyclegan.pool_size`, 50 in the paper; 0: none): each discriminator
sees, of the fakes made this step, either each one or an older one from its pool, so that
it does not chase the generator's latest outputs. Each batch row r has its own
S = ceil(pool_size / batch size) slots, pool [B, S, H, W, C] in the train state
(`family_state[gen.sharding.PER_ROW]`), split over the devices as the batch is, so that no
image moves between devices and the pools are checkpointed and resumed exactly. Row r reads
and writes only its slots: while they are not all filled, it stores its new fake and
returns it; afterwards, with probability ½ it returns one of its stored fakes, chosen
uniformly, and stores the new one in its place, otherwise it returns the new one. The coin
and the slot are drawn per row from the step's key, so they do not depend on the device
count. At batch size 1 (the paper's) this is the paper's rule exactly: one pool of 50.

Data: an unpaired dataset whose training rows hold an A image "input" and an unrelated B
image "x", of the same shape: `digits2styled`, whose evaluation split holds each A image's
true translation, or tfds's `cycle_gan/*` (gen.data.cycle_gan), whose evaluation split has
none (`Dataset.domain_sizes` says so, and which of its rows hold each domain's images once).
Evaluation: `translation` (pix2pix's, for G; "inverse_"-prefixed for F; only where the true
translations are known), `translation_inception` (Inception features of G(a) against the B
images, of F(b) against the A images: FID needs no truth) and `cycle` (F(G(a)) against a,
G(F(b)) against b). `--mode=sample` translates A → B as pix2pix does, or with `--inverse`
B → A.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen import UsageError, checks, data, metrics, sharding, writers
from gen.families import (EvalGroup, ModuleState, TrainState, adam, init_variables, median_range,
                          num_classes, options_block)
from gen.families import gan as gan_family
from gen.families import pix2pix

MODULES = ("generator", "inverse_generator", "discriminator", "inverse_discriminator")
# How images of each domain become grey digits gen's digits classifier reads.
CLASSIFIER_VIEWS = {
    "identity": lambda images: images,
    "grey": lambda images: images.mean(axis=-1, keepdims=True),
    "unstyled": lambda images: data.undo_digit_style(data.to_unit_range(images)) * 2.0 - 1.0,
}
_SNAPSHOT_EXAMPLES, _SNAPSHOT_COLUMNS = 16, 2  # 8 rows of 2 sextets.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.cyclegan`: the generators' objective, the history pools, and how evaluation
  shows each domain to config.eval.classifier."""
  return options_block("cyclegan", {
      "cycle_weight": 10.0,  # λ of the cycle-consistency L1 terms, each way.
      "identity_weight": 0.5,  # Of λ, for the identity L1 terms; 0 leaves them out.
      "adversarial_weight": 1.0,  # Of the GAN loss (config.gan.loss), each way.
      "pool_size": 50,  # Fakes in each discriminator's history pool; 0: none.
      "classifier_view_a": "grey",  # One of CLASSIFIER_VIEWS, for A's images.
      "classifier_view_b": "unstyled",  # For B's images (digits2styled's style undone).
  }, overrides)


def validate(config):
  gan_family.validate(config)
  if "cyclegan" not in config:
    raise UsageError("This model needs config.cyclegan (see gen.families.cyclegan.options).")
  if config.gan.n_critic != 1:
    raise UsageError(f"config.gan.n_critic={config.gan.n_critic}: CycleGAN trains each "
                     f"discriminator once a step, on the step's images; set "
                     f"config.gan.n_critic=1.")
  if num_classes(config) or config.model.get("conditioning", "none") != "none":
    raise UsageError("CycleGAN translates images, not classes: set config.model.num_classes=0 "
                     "and conditioning 'none'.")
  options_ = config.cyclegan
  for key in ("cycle_weight", "identity_weight", "adversarial_weight"):
    checks.in_range(options_[key], f"cyclegan.{key}", 0.0, float("inf"))
  if not options_.adversarial_weight:
    raise UsageError("config.cyclegan.adversarial_weight=0: without the GAN loss the "
                     "generators need not translate at all (the identity is a perfect cycle).")
  checks.at_least(options_.pool_size, "cyclegan.pool_size", 0)
  for key in ("classifier_view_a", "classifier_view_b"):
    checks.one_of(options_[key], f"cyclegan.{key}", tuple(CLASSIFIER_VIEWS))
  pix2pix.check_penalties_and_norm(config)


def batch_spec(config, dataset) -> dict:
  """The A images "input" and B images "x", of one shape."""
  if "input" not in dataset.spec:
    raise UsageError(f"CycleGAN needs two domains, examples with an A image 'input' and a B "
                     f"image 'x'; {dataset.name} has only {sorted(dataset.spec)}: use e.g. "
                     f"--config.dataset.name=digits2styled.")
  if dataset.spec["input"].shape != dataset.spec["x"].shape:
    raise UsageError(f"CycleGAN's generators map each domain's images to the other's shape, "
                     f"and {dataset.name}'s differ: 'input' {dataset.spec['input'].shape}, 'x' "
                     f"{dataset.spec['x'].shape}.")
  return {"input": dataset.spec["input"], "x": dataset.spec["x"]}


def make_optimizers(config, names):
  return adam(config, names)


def pool_slots(pool_size: int, batch_size: int) -> int:
  """S, each batch row's slots: ceil(pool_size / batch_size)."""
  return math.ceil(pool_size / batch_size)


def init_state(models, optimizers, config, spec, key) -> TrainState:
  keys = dict(zip(MODULES, jax.random.split(key, len(MODULES))))
  rng = jax.random.fold_in(key, len(MODULES))
  image = jnp.zeros((1, *spec["x"].shape))
  ema = bool(config.gan.ema_decay)
  modules = {}
  for name in MODULES:
    generator = "generator" in name
    args = (image,) if generator else (image, None)
    params, stats = init_variables(models[name], keys[name], *args, train=False)
    modules[name] = ModuleState.create(params, optimizers[name], stats, ema=generator and ema)
  family_state = {}
  if config.cyclegan.pool_size:
    slots = pool_slots(config.cyclegan.pool_size, config.batch_size)
    empty = jnp.zeros((config.batch_size, slots, *spec["x"].shape), jnp.float32)
    family_state = {sharding.PER_ROW: {"pool_a": empty, "pool_b": empty},
                    "pool_filled": jnp.zeros((), jnp.int32)}
  return TrainState.create(rng, modules, family_state)


def query_pool(pool, fakes, filled, coins, slots):
  """(what the discriminator sees [B, ...], the updated pool [B, S, ...]) of the new `fakes`
  [B, ...], by the rule in this module's docstring.

  filled: int [], the slots of every row filled so far; coins [B] uniform in [0, 1): row r
  returns a stored fake where coins[r] < ½; slots [B] int in [0, S): which one. Only
  elementwise arithmetic along the rows, so a pool split over devices stays where it is.
  """
  size = pool.shape[1]
  full = filled >= size
  swap = full & (coins < 0.5)
  written = jax.nn.one_hot(jnp.where(full, slots, jnp.minimum(filled, size - 1)), size,
                           dtype=jnp.bool_) & jnp.where(full, swap, True)[:, None]
  chosen = jax.nn.one_hot(slots, size, dtype=pool.dtype)
  image_axes = (1,) * (pool.ndim - 2)
  stored = jnp.sum(chosen.reshape(*chosen.shape, *image_axes) * pool, axis=1)
  seen = jnp.where(swap.reshape(-1, *image_axes), stored, fakes)
  pool = jnp.where(written.reshape(*written.shape, *image_axes),
                   fakes[:, None].astype(pool.dtype), pool)
  return seen, pool


l1_distance = pix2pix.l1_distance  # mean |targets − outputs| over the batch's pixels.


def generator_loss(logits_b, logits_a, outputs, a, b, adversarial_loss, cycle_weight: float,
                   identity_weight: float, adversarial_weight: float = 1.0):
  """(L, metrics) of both generators (the formula in this module's docstring): logits_b D_B's
  patch logits for G(a), logits_a D_A's for F(b); outputs {"cycled_a": F(G(a)), "cycled_b":
  G(F(b)), and with identity_weight "same_b": G(b), "same_a": F(a)}."""
  parts = {"g_adversarial": adversarial_loss(logits_b),
           "inverse_g_adversarial": adversarial_loss(logits_a),
           "g_cycle": l1_distance(outputs["cycled_a"], a),
           "inverse_g_cycle": l1_distance(outputs["cycled_b"], b)}
  loss = (adversarial_weight * (parts["g_adversarial"] + parts["inverse_g_adversarial"])
          + cycle_weight * (parts["g_cycle"] + parts["inverse_g_cycle"]))
  if identity_weight:
    parts.update(g_identity=l1_distance(outputs["same_b"], b),
                 inverse_g_identity=l1_distance(outputs["same_a"], a))
    loss += identity_weight * cycle_weight * (parts["g_identity"] + parts["inverse_g_identity"])
  return loss, parts


def make_train_step(models, optimizers, config):
  g_module, f_module = models["generator"], models["inverse_generator"]
  options_ = config.cyclegan

  def train_step(state: TrainState, batch, rng):
    """batch {"input": A images, "x": unrelated B images} [B, H, W, C] in [-1, 1]."""
    a, b = batch["input"], batch["x"]
    sides = {name: gan_family.make_discriminator(models[name], optimizers[name], config)
             for name in ("discriminator", "inverse_discriminator")}
    adversarial_loss = sides["discriminator"][2]
    d_key, inverse_d_key, g_key, inverse_g_key, pool_key = jax.random.split(rng, 5)
    g, f = state.modules["generator"], state.modules["inverse_generator"]

    def translate(params):
      g_params, f_params = params
      to_b = lambda x: g_module.apply(g.variables(g_params), x, train=True)
      to_a = lambda x: f_module.apply(f.variables(f_params), x, train=True)
      fake_b, fake_a = to_b(a), to_a(b)
      outputs = {"fake_b": fake_b, "fake_a": fake_a, "cycled_a": to_a(fake_b),
                 "cycled_b": to_b(fake_a)}
      if options_.identity_weight:
        outputs.update(same_b=to_b(b), same_a=to_a(a))
      return outputs

    # One pass of each generator chain serves both updates: the discriminators train on its
    # fakes, and the generators' gradient is pulled back through it with its VJP.
    outputs, generators_vjp = jax.vjp(translate, (g.params, f.params))
    fakes = {"b": jax.lax.stop_gradient(outputs["fake_b"]),
             "a": jax.lax.stop_gradient(outputs["fake_a"])}
    family_state = state.family_state
    if options_.pool_size:
      pools, filled = family_state[sharding.PER_ROW], family_state["pool_filled"]
      seen, new_pools = {}, {}
      for i, domain in enumerate(("a", "b")):
        coin_key, slot_key = jax.random.split(jax.random.fold_in(pool_key, i))
        rows = a.shape[0]
        seen[domain], new_pools[f"pool_{domain}"] = query_pool(
            pools[f"pool_{domain}"], fakes[domain], filled,
            jax.random.uniform(coin_key, (rows,)),
            jax.random.randint(slot_key, (rows,), 0, pools[f"pool_{domain}"].shape[1]))
      fakes = seen
      family_state = {sharding.PER_ROW: new_pools,
                      "pool_filled": jnp.minimum(filled + 1, pools["pool_a"].shape[1])}
    d, d_metrics = sides["discriminator"][1](
        state.step, state.modules["discriminator"], b, None, fakes["b"], None, d_key)
    inverse_d, inverse_d_metrics = sides["inverse_discriminator"][1](
        state.step, state.modules["inverse_discriminator"], a, None, fakes["a"], None,
        inverse_d_key)

    def loss_fn(outputs):
      logits_b = sides["discriminator"][0](d.params, d.batch_stats, outputs["fake_b"], None,
                                           g_key)[0]
      logits_a = sides["inverse_discriminator"][0](inverse_d.params, inverse_d.batch_stats,
                                                   outputs["fake_a"], None, inverse_g_key)[0]
      return generator_loss(logits_b, logits_a, outputs, a, b, adversarial_loss,
                            options_.cycle_weight, options_.identity_weight,
                            options_.adversarial_weight)

    (g_loss, g_metrics), outputs_grad = jax.value_and_grad(loss_fn, has_aux=True)(outputs)
    ((g_grads, f_grads),) = generators_vjp(outputs_grad)
    decay = gan_family.ema_decay(config.gan.ema_decay, state.step)
    g = g.apply_gradients(optimizers["generator"], g_grads).update_ema(decay)
    f = f.apply_gradients(optimizers["inverse_generator"], f_grads).update_ema(decay)
    new_state = state.next(generator=g, inverse_generator=f, discriminator=d,
                           inverse_discriminator=inverse_d).replace(family_state=family_state)
    return new_state, {**d_metrics, **{f"inverse_{k}": v for k, v in inverse_d_metrics.items()},
                       "g_loss": g_loss, **g_metrics}

  return train_step


# --- Translating ---

def _translation_function(models, name):
  module = models[name]

  def translate(state: TrainState, inputs, key):
    """inputs [B, H, W, C] in model space -> their translations, from the EMA weights where
    kept (the generator has no noise: `key` is unused)."""
    del key
    m = state.modules[name]
    return module.apply(m.variables(m.sampling_params), inputs, train=False)

  return translate


def make_functions(models, config):
  return {"translate": _translation_function(models, "generator"),
          "inverse_translate": _translation_function(models, "inverse_generator")}


sample_flags = {
    **pix2pix.sample_flags,
    "inverse": ("bool", False, "--mode=sample, CycleGAN: translate B to A with F (the inputs "
                               "are the evaluation split's B images, or --input's); default: "
                               "A to B with G."),
}


def make_sampler(experiment, num_samples: int, input: str | None = None,  # noqa: A002
                 inverse: bool = False):
  """pix2pix's sampler of G (A → B), or with `inverse` of F (B → A): {"samples", "inputs"},
  and from a paired evaluation split "targets" (the true translations) and "labels"."""
  if inverse:
    return pix2pix.translation_sampler(experiment, num_samples, input, "inverse_translate",
                                       "x", "input")
  return pix2pix.translation_sampler(experiment, num_samples, input)


# --- Snapshots ---

def snapshot_batch(config, dataset) -> dict[str, np.ndarray]:
  """The first training rows (A images and unrelated B images), as many as the grid shows."""
  examples = dataset.read(np.arange(min(_SNAPSHOT_EXAMPLES, dataset.num_examples)))
  return {"input": examples["input"], "x": examples["x"]}


def make_snapshots(models, config):
  functions = make_functions(models, config)

  def snapshots(state: TrainState, batch, key):
    """"samples": a, G(a), F(G(a)), b, F(b), G(F(b)) of each row in a row, [6N, H, W, C]."""
    to_b = lambda x: functions["translate"](state, x, key)
    to_a = lambda x: functions["inverse_translate"](state, x, key)
    a, b = batch["input"], batch["x"]
    fake_b, fake_a = to_b(a), to_a(b)
    sextets = jnp.stack([a, fake_b, to_a(fake_b), b, fake_a, to_b(fake_a)], axis=1)
    return {"samples": sextets.reshape(-1, *a.shape[1:])}

  return snapshots


def render_snapshots(outputs, batch) -> dict:
  return {name: writers.image_grid(np.asarray(values), columns=6 * _SNAPSHOT_COLUMNS)
          for name, values in outputs.items()}


# --- Evaluation ---

def _translation(context):
  """pix2pix's translation group in both directions: G(a) against style(a), then
  ("inverse_"-prefixed) F(b) against b's A image, each read by config.eval.classifier
  through config.cyclegan's view of the output's domain."""
  config = context.experiment.config
  views = {domain: (lambda images, domain=domain: CLASSIFIER_VIEWS[
      config.cyclegan[f"classifier_view_{domain}"]](images)) for domain in ("a", "b")}
  forward = pix2pix.translation_evaluation("translate", "input", "x", views["b"])(context)
  inverse = pix2pix.translation_evaluation("inverse_translate", "x", "input", views["a"],
                                           "inverse_")(context)
  return lambda state: {**forward(state), **inverse(state)}


def cycle_metrics(cycled, originals) -> dict[str, float]:
  """cycle_l1, the mean |cycled − originals| in model space, and cycle_ssim, the mean SSIM of
  cycled against originals, both taken to [0, 1]."""
  l1 = float(np.mean(np.abs(np.asarray(cycled, np.float64) - np.asarray(originals, np.float64))))
  ssim = metrics.ssim(data.to_unit_range(np.asarray(originals, np.float32)),
                      data.to_unit_range(np.asarray(cycled, np.float32)))
  return {"cycle_l1": l1, "cycle_ssim": float(np.mean(ssim))}


def domain_images(split) -> dict[str, np.ndarray]:
  """{"input": the A images, "x": the B images} of an evaluation split, each image once: of
  an unpaired split (`domain_sizes`, whose rows repeat the smaller domain) the first N_A
  rows' "input" and N_B rows' "x", of a paired one every row's."""
  sizes = split.domain_sizes or {field: split.num_examples for field in ("input", "x")}
  if sizes["input"] == sizes["x"]:
    examples = split.read(np.arange(sizes["x"]))
    return {field: examples[field] for field in ("input", "x")}
  return {field: split.read(np.arange(sizes[field]))[field] for field in ("input", "x")}


def _cycle(context):
  """F(G(a)) against a over the evaluation split's A images, and ("inverse_") G(F(b))
  against b over its B images."""
  experiment, split = context.experiment, context.split
  batch_spec(experiment.config, split)
  images = domain_images(split)
  to_b = pix2pix.translator(experiment, "translate")
  to_a = pix2pix.translator(experiment, "inverse_translate")
  key = jax.random.key(experiment.config.seed)

  def cycle(state):
    a, b = images["input"], images["x"]
    forward = cycle_metrics(to_a(state, to_b(state, a, key), key), a)
    inverse = cycle_metrics(to_b(state, to_a(state, b, key), key), b)
    return {**forward, **{f"inverse_{k}": v for k, v in inverse.items()}}

  return cycle


def _translation_summary(values):
  forward = pix2pix.translation_summary(values)
  inverse = pix2pix.translation_summary(values, "inverse_")
  return f"A→B {forward}; B→A {inverse}" if forward and inverse else ""


def _cycle_summary(values):
  if "cycle_ssim" not in values:
    return ""
  return (f"cycle SSIM {median_range(values['cycle_ssim'], 3)} (A→B→A) and "
          f"{median_range(values['inverse_cycle_ssim'], 3)} (B→A→B)")


# (prefix, function, its inputs, the domain its outputs are scored against)
_DIRECTIONS = (("", "translate", "input", "x"), ("inverse_", "inverse_translate", "x", "input"))


def _translation_inception(context):
  """gen.evaluate's `inception` metrics of G's translations of the evaluation split's A
  images against its B images, and ("inverse_") of F's of the B images against the A
  images: how far each translated set is from the domain it was translated to, which needs
  no true translation (FID, KID, precision/recall, density/coverage; not the Inception
  score, which rewards ImageNet classes, not a domain)."""
  from gen import evaluate  # gen.evaluate builds on the families, not they on it.
  experiment, split = context.experiment, context.split
  batch_spec(experiment.config, split)
  predict = evaluate.inception_predict()  # The weights file, checked before any step.
  extract = lambda images: evaluate.features(predict, images, evaluate.INCEPTION_BATCH,
                                             experiment.mesh)
  images = domain_images(split)
  references = {field: evaluate.reference_features(
      context.workdir, f"{split.name}_{field}_{len(images[field])}", images[field], extract,
      evaluate.INCEPTION) for field in images}
  translators = {function: pix2pix.translator(experiment, function)
                 for _, function, _, _ in _DIRECTIONS}
  key = jax.random.key(experiment.config.seed)

  def translation_inception(state):
    results = {}
    for prefix, function, inputs, target in _DIRECTIONS:
      fake = extract(translators[function](state, images[inputs], key))
      results.update({prefix + evaluate.inception_name(name): value for name, value in
                      evaluate.feature_metrics(references[target], fake, score=False).items()})
    return results

  return translation_inception


def _translation_inception_summary(values):
  if "fid" not in values:
    return ""
  return (f"FID of the translations to the other domain {median_range(values['fid'])} (A→B) "
          f"and {median_range(values['inverse_fid'])} (B→A)")


_INCEPTION_HIGHER = ("inception_precision", "inception_recall", "inception_density",
                     "inception_coverage")
eval_groups = {
    "translation": EvalGroup(_translation, ("translate", "inverse_translate"), frozenset(
        {*pix2pix.TRANSLATION_METRICS, *(f"inverse_{m}" for m in pix2pix.TRANSLATION_METRICS)}),
        _translation_summary),
    "translation_inception": EvalGroup(
        _translation_inception, ("translate", "inverse_translate"),
        frozenset({prefix + m for prefix in ("", "inverse_") for m in _INCEPTION_HIGHER}),
        _translation_inception_summary),
    "cycle": EvalGroup(_cycle, ("translate", "inverse_translate"),
                       frozenset({"cycle_ssim", "inverse_cycle_ssim"}), _cycle_summary),
}
