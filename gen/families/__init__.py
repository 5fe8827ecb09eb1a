"""Families: everything that makes one kind of generative model train, sample and evaluate.

A family is a module (or any object) with the attributes below. `get(name)` returns it as a
`Family`, with the defaults of this module filled in for what it leaves out. The loop
(gen.train), the experiment (gen.experiment), evaluation (gen.evaluate), `--mode=sample` and
the benchmark (gen.bench) call only these: none of them reads a family's config block or
compares a family's name. A model file names the family that trains it (gen.models).

Required:
  validate(config) -> None
      Raises UsageError for a value in the config that cannot work, naming the key and its
      allowed range, before anything is compiled. Runs once, when the experiment is built.
  batch_spec(config, dataset) -> {name: jax.ShapeDtypeStruct}
      What one example of a training batch holds: names, per-example shapes and dtypes. The
      dataset's `read` provides these names; the step gets them with a leading batch axis of
      `examples_per_step(config) · config.batch_size`.
  init_state(models, optimizers, config, spec, key) -> TrainState
      `spec` is the batch spec; models and optimizers are dicts by module name.
  make_train_step(models, optimizers, config) -> train_step(state, batch, rng)
      A pure `(state, batch, rng) -> (state, {name: scalar})`. `rng` is the step's key.

Optional (the default in brackets):
  examples_per_step(config) -> int  [1]
      Batches of `config.batch_size` one step consumes (a GAN's n_critic).
  make_optimizers(config, module_names) -> {name: optax.GradientTransformation}  [`adam`]
  throughput_unit(config) -> (unit, per example)  [("images", 1)]
      The loop logs `<unit>_per_sec`: examples per second times `per example`.
  make_functions(models, config) -> {name: function}  [{}]
      What sampling and the shared evaluation groups call, by name:
        "generate": generate(state, key, labels [B] int32) -> samples [B, ...] in model space
          (images in [-1, 1]); the labels are the classes asked for (ignored when the model
          is unconditional).
        "reconstruct": reconstruct(state, x [B, ...], labels=None) -> reconstructions of x.
  snapshot_batch(config, dataset) -> {name: np.ndarray}  [`default_snapshot_batch`]
      The fixed real examples every snapshot is given.
  make_snapshots(models, config) -> snapshots(state, batch, key) -> {name: array} or None
      Computed on the devices every `config.sample_every` steps.  [{"samples"} from
      "generate", in every class in turn; None (no snapshots) without "generate"]
  render_snapshots(outputs, batch) -> {name: uint8 image [H, W, C] or str}  [`render_examples`]
      On the host: pictures become PNGs and TensorBoard images, strings text files and
      TensorBoard text. "samples" is the main one; others are written as <name>_step_<n>.
  snapshot_renderer(config, dataset) -> render_snapshots  [the family's `render_snapshots`]
      For a family whose rendering needs the data (a tokenizer, to turn tokens into text).
  eval_groups: {name: EvalGroup}  [{}]
      Evaluation groups only this family has (gen.evaluate has the shared ones).
  sample_flags: {flag: (kind, default, help)}  [`GENERATE_SAMPLE_FLAGS`]
      Extra flags of `--mode=sample` (kind: "string", "integer", "float", "list" or "bool").
  make_sampler(experiment, num_samples, **sample_flags) -> sampler(state, key) -> {name: array}
      or str  [`sample_generated`] Checks the flags at once (before a checkpoint is restored);
      the sampler's arrays are written to the `--output` .npz; text is printed and written to
      `--output` (a .txt).
  benchmark(experiment, state, step_seconds, peak_flops_per_sec) -> {name: number}  [{}]
      Numbers of the family's own that gen.bench reports beside the shared ones (a FLOP
      count by the family's convention, decoding speed), given the step's measured time.
"""
import dataclasses
import functools
import importlib
import pkgutil
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from gen import UsageError, checks, models as models_lib, writers


@struct.dataclass
class ModuleState:
  """What one module carries from step to step: its parameters, BatchNorm (or other mutable)
  statistics, optimizer state and, where kept, an exponential moving average of its params.

  `apply_gradients` is the one place an update happens. The optimizer itself is not state:
  the family has it from `make_optimizers`, and a checkpoint holds only arrays.
  """
  params: Any
  batch_stats: Any
  opt_state: Any
  ema: Any

  @classmethod
  def create(cls, params, optimizer, batch_stats=None, ema: bool = False) -> "ModuleState":
    return cls(params=params, batch_stats=batch_stats or {}, opt_state=optimizer.init(params),
               ema=params if ema else None)

  def variables(self, params=None) -> dict[str, Any]:
    """The variables to `apply` the module with: params (these or `params`), and the batch
    statistics where it has any."""
    params = self.params if params is None else params
    return {"params": params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

  def apply_gradients(self, optimizer: optax.GradientTransformation, grads, batch_stats=None
                      ) -> "ModuleState":
    """One step of `optimizer` on `grads`; `batch_stats` replaces the statistics when given."""
    updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                        batch_stats=self.batch_stats if batch_stats is None else batch_stats)

  def update_ema(self, decay) -> "ModuleState":
    """The average moved towards the current params: decay·ema + (1 - decay)·params."""
    if self.ema is None:
      return self
    return self.replace(ema=jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, self.ema,
                                         self.params))

  @property
  def sampling_params(self):
    """The EMA weights when the module keeps them, else its current weights."""
    return self.params if self.ema is None else self.ema


@struct.dataclass
class TrainState:
  """Everything a run carries from step to step, and what a checkpoint stores.

  Attributes:
    step: int32 [], the number of updates applied.
    rng: the run's typed PRNG key; step s uses `fold_in(rng, s)`, so randomness is the
      same across device counts and resumes.
    modules: {module name: ModuleState}.
    family_state: anything else the family carries (empty for most). Its entry
      `gen.sharding.PER_ROW`, where present, holds arrays with a leading axis of the batch
      size, one row per batch row, split over the devices as the batch is (CycleGAN's
      history pools); everything else in the state is replicated.
  """
  step: jax.Array
  rng: jax.Array
  modules: dict[str, ModuleState]
  family_state: dict[str, Any] = struct.field(default_factory=dict)

  @classmethod
  def create(cls, rng, modules: dict[str, ModuleState], family_state=None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), rng=rng, modules=modules,
               family_state=family_state or {})

  @property
  def params(self) -> dict[str, Any]:
    """{module name: params}."""
    return {name: module.params for name, module in self.modules.items()}

  def next(self, **modules: ModuleState) -> "TrainState":
    """The state after this step: the step counted, the given modules replaced."""
    return self.replace(step=self.step + 1, modules={**self.modules, **modules})


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)


def init_variables(module, key, *args, **kwargs):
  """(params, batch_stats) of a freshly initialised module."""
  variables_ = module.init({"params": key}, *args, **kwargs)
  return variables_["params"], variables_.get("batch_stats", {})


# --- Optimizers ---

SCHEDULES = ("constant", "linear", "constant_then_linear")


def adam(config, names, updates_per_step: dict[str, int] | None = None
         ) -> dict[str, optax.GradientTransformation]:
  """Adam per module, from `config.optimizer.<name>` (learning_rate, b1, b2), with the
  learning rate of `config.optimizer.schedule`: "constant", "linear" decay to 0 at the
  last step, or "constant_then_linear": constant for the first half of the updates, then
  linear decay to 0 (CycleGAN's, and pix2pix's code's). A module updated k times a step
  (`updates_per_step`) decays over k·num_steps updates. The schedule counts in the optimizer state, so resumes continue it.
  """
  schedule = config.optimizer.get("schedule", "constant")
  if schedule not in SCHEDULES:
    raise UsageError(f"config.optimizer.schedule={schedule!r}; use one of {SCHEDULES}.")
  optimizers = {}
  for name in names:
    if name not in config.optimizer:
      raise UsageError(f"config.optimizer has no entry for the model's module {name!r}.")
    options = config.optimizer[name].to_dict()
    checks.positive(options["learning_rate"], f"optimizer.{name}.learning_rate")
    for beta in ("b1", "b2"):
      if beta in options:
        checks.in_range(options[beta], f"optimizer.{name}.{beta}", 0.0, 1.0, high_open=True)
    updates = config.num_steps * (updates_per_step or {}).get(name, 1)
    if schedule == "linear":
      options["learning_rate"] = optax.linear_schedule(options["learning_rate"], 0.0, updates)
    elif schedule == "constant_then_linear":
      constant = updates // 2
      options["learning_rate"] = optax.join_schedules(
          [optax.constant_schedule(options["learning_rate"]),
           optax.linear_schedule(options["learning_rate"], 0.0, updates - constant)], [constant])
    optimizers[name] = optax.adam(**options)
  return optimizers


# --- What families share ---

def num_classes(config) -> int:
  """Classes of a conditional model, 0 for an unconditional one."""
  return models_lib.num_classes(config.model)


def alternate(inputs, outputs) -> jax.Array:
  """[2n, ...]: inputs and outputs interleaved, input then output, so that a grid shows each
  example beside what the model made of it; n is half the inputs, or fewer outputs."""
  half = min(inputs.shape[0] // 2, outputs.shape[0])
  pairs = jnp.stack([inputs[:half], outputs[:half]], axis=1)
  return pairs.reshape(-1, *inputs.shape[1:])


def sample_labels(classes: int, num: int, labels=None) -> np.ndarray:
  """The classes of `num` samples: `labels` repeated, or all classes in turn (zeros for an
  unconditional model, `classes` 0)."""
  if labels is None:
    return np.arange(num, dtype=np.int32) % max(classes, 1)
  try:
    labels = np.asarray([int(label) for label in labels], np.int32)
  except ValueError:
    raise UsageError(f"--labels={','.join(map(str, labels))}: give integer classes, e.g. "
                     f"--labels=0,1,2.") from None
  if not classes:
    raise UsageError("Labels were given, but this model is unconditional "
                     "(config.model.num_classes is 0).")
  if labels.size == 0 or labels.min() < 0 or labels.max() >= classes:
    raise UsageError(f"Labels must be in [0, {classes}), got {labels.tolist()}.")
  return np.resize(labels, num)


GENERATE_SAMPLE_FLAGS = {
    "labels": ("list", None, "--mode=sample, conditional models: the classes to sample, in "
                             "turn (e.g. 0,1,2); default: every class in turn."),
}


def sample_generated(experiment, num_samples: int, labels=None):
  """The sampler of families whose functions include "generate": `num_samples` samples of
  the classes `labels` in turn, as {"samples": images in [0, 1] NHWC or points, "labels"}."""
  classes = sample_labels(experiment.num_classes, num_samples, labels)  # Fails before restoring.
  sampler = experiment.sampler()

  def sample(state, key) -> dict[str, np.ndarray]:
    samples = sampler(state, num_samples, key, labels).astype(np.float32)
    if samples.ndim == 4:
      samples = writers.to_unit_range(samples)
    return {"samples": samples, "labels": classes}

  return sample


_SNAPSHOT_SIZE = 64  # Examples shown in a grid; 2-D points are drawn 2,500 at a time.


def default_snapshot_batch(config, dataset) -> dict[str, np.ndarray]:
  """The first examples of the training split: a grid's worth of images (for a conditional
  model a square whose columns are the classes), or 2,500 points."""
  num = _SNAPSHOT_SIZE if len(dataset.shape) > 1 else 2500
  if num_classes(config) and len(dataset.shape) > 1:
    num = num_classes(config)**2
  return dataset.read(np.arange(min(num, dataset.num_examples)))


def _generated_snapshots(make_functions, models, config):
  """snapshots(state, batch, key) -> {"samples"}: generated from the same noise at every
  call, so grids show progress over training; for a conditional model, sample i has class
  i mod K. None for a family without "generate": it has no snapshots."""
  generate = make_functions(models, config).get("generate")
  if generate is None:
    return None
  classes = max(num_classes(config), 1)

  def snapshots(state, batch, key):
    num = jax.tree.leaves(batch)[0].shape[0]
    return {"samples": generate(state, key, jnp.arange(num, dtype=jnp.int32) % classes)}

  return snapshots


def render_examples(outputs, batch) -> dict[str, np.ndarray]:
  """Images [N, H, W, C] as grids; 2-D points [N, 2] as a scatter over the batch's points."""
  pictures = {}
  for name, values in outputs.items():
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[-1] == 2:
      pictures[name] = writers.scatter_plot(values, np.asarray(batch["x"]))
    else:
      pictures[name] = writers.image_grid(values)
  return pictures


# --- Evaluation groups of a family's own ---

@dataclasses.dataclass(frozen=True)
class EvalGroup:
  """One group of `config.eval.metrics`.

  make(context) -> evaluate(state) -> {metric: float}; `context` (gen.evaluate.EvalContext)
  holds the experiment, the evaluation split, the workdir, the family's functions and a
  sampler. `needs` names the family functions the group calls; `higher_is_better` names its
  metrics for which a larger value is better (the others: smaller is better).
  """
  make: Callable[[Any], Callable[[Any], dict]]
  needs: tuple[str, ...] = ()
  higher_is_better: frozenset[str] = frozenset()
  # summary(values) -> the phrase gen.results writes for the group in the README's tables;
  # `values` maps each metric that every run has to its values over the runs (seeds).
  summary: Callable[[dict[str, list[float]]], str] | None = None


def median_range(values, digits: int = 1, suffix: str = "") -> str:
  """"median" or "median (min-max)" of values over seeds, as the results tables show them."""
  fmt = lambda v: f"{v:.{digits}f}"
  text = fmt(statistics.median(values))
  if len(values) > 1:
    text += f" ({fmt(min(values))}-{fmt(max(values))})"
  return text + suffix


def percent(values) -> list[float]:
  return [100 * v for v in values]


# --- The registry ---

@dataclasses.dataclass(frozen=True)
class Family:
  """A family with every attribute of the contract (see this module's docstring)."""
  name: str
  validate: Callable
  batch_spec: Callable
  init_state: Callable
  make_train_step: Callable
  examples_per_step: Callable
  make_optimizers: Callable
  throughput_unit: Callable
  make_functions: Callable
  snapshot_batch: Callable
  make_snapshots: Callable
  render_snapshots: Callable
  snapshot_renderer: Callable
  eval_groups: dict
  sample_flags: dict
  make_sampler: Callable
  benchmark: Callable


REQUIRED = ("validate", "batch_spec", "init_state", "make_train_step")
DEFAULTS = {
    "examples_per_step": lambda config: 1,
    "make_optimizers": adam,
    "throughput_unit": lambda config: ("images", 1),
    "make_functions": lambda models, config: {},
    "snapshot_batch": default_snapshot_batch,
    "make_snapshots": None,  # Filled in below: samples from "generate".
    "render_snapshots": render_examples,
    "snapshot_renderer": None,  # Filled in below: the family's render_snapshots.
    "eval_groups": {},
    "sample_flags": GENERATE_SAMPLE_FLAGS,
    "make_sampler": sample_generated,
    "benchmark": lambda experiment, state, step_seconds, peak_flops_per_sec: {},
}

_REGISTERED: dict[str, Family] = {}


def as_family(name: str, definition) -> Family:
  """`definition` (a module, class or namespace with the contract's attributes) as a Family."""
  missing = [attr for attr in REQUIRED if not hasattr(definition, attr)]
  if missing:
    raise ValueError(f"Family {name!r} lacks {missing}; see gen.families for the contract.")
  fields = {attr: getattr(definition, attr, DEFAULTS.get(attr)) for attr in
            (*REQUIRED, *DEFAULTS)}
  if fields["make_snapshots"] is None:
    fields["make_snapshots"] = functools.partial(_generated_snapshots, fields["make_functions"])
  if fields["snapshot_renderer"] is None:
    render = fields["render_snapshots"]
    fields["snapshot_renderer"] = lambda config, dataset: render
  return Family(name=name, **fields)


def options_block(kind: str, defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
  """A family's block of options in the config: `defaults` with `overrides` changed; a key
  it does not have is a KeyError naming the known ones."""
  block = ml_collections.ConfigDict(defaults)
  unknown = set(overrides) - set(block)
  if unknown:
    raise KeyError(f"Unknown {kind} options {sorted(unknown)}; known: {sorted(block)}.")
  block.update(overrides)
  return block


def register(name: str, definition) -> None:
  """Makes `name` a family for models registered with gen.models.register, for this process.
  `definition` has the attributes of the contract (this module's docstring). gen's own
  families cannot be replaced."""
  if name in builtin():
    raise ValueError(f"{name!r} is one of gen's own families; register under another name.")
  _REGISTERED[name] = as_family(name, definition)


def builtin() -> list[str]:
  """The names of gen's own families: the modules of this package."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__))


def get(name: str) -> Family:
  """The family called `name`: registered from outside gen, or gen.families.<name>."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in builtin():
    raise UsageError(f"Unknown family {name!r}; known: {known()} (gen.families.register adds "
                     f"one).")
  return as_family(name, importlib.import_module(f"{__name__}.{name}"))


def known() -> list[str]:
  return sorted({*builtin(), *_REGISTERED})
