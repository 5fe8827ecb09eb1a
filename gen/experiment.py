"""What a config builds before anything is compiled, the programs it compiles, and the ways
back into a trained run: restoring its latest checkpoint and sampling from it.

  build(config, mesh, workdir) -> Experiment: the config checked (keys and values), the mesh,
    the data, the models, their family and optimizers.
  restore_latest(experiment, workdir) -> TrainState
  sample(config, workdir, num_samples, output, **sample_flags): --mode=sample.

A workdir may fix config values (its fixed_config.json, gen.writers): what its data
determined (a tokenizer, a corpus's hash), or the sizes of a converted checkpoint. They win
over the experiment file's and the command line's, and the log names each that differs. A
config with `init_from` (a workdir) starts from that run's latest parameters, with the
values that workdir fixes.

Everything here goes through the family's interface (gen.families); nothing writes files
except `sample`, which writes the file it is asked for.
"""
import copy
import dataclasses
import functools
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gen import (UsageError, checkpoint, checks, cli, data, families, models as models_lib,
                 sharding, writers)
from gen.families import TrainState, step_key


@dataclasses.dataclass
class Experiment:
  """What a config builds before anything is compiled."""
  config: Any
  mesh: jax.sharding.Mesh
  dataset: data.Dataset
  models: dict
  family: families.Family
  optimizers: dict
  # Config values the run keeps fixed (from init_from's workdir, this workdir and the data),
  # which the loop records in the workdir with the dataset's files.
  fixed: dict = dataclasses.field(default_factory=dict)
  # XLA options for the programs the experiment compiles (None: XLA's defaults). The tests
  # turn XLA's optimisations off for their short runs, where compiling is most of the time.
  compiler_options: ClassVar[dict | None] = None

  def jit(self, fn, **kwargs):
    """jax.jit with the experiment's compiler options."""
    return jax.jit(fn, compiler_options=self.compiler_options, **kwargs)

  @functools.cached_property
  def spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The family's batch spec: what one example of a training batch holds."""
    return self.family.batch_spec(self.config, self.dataset)

  def read_batch(self, indices) -> dict[str, np.ndarray]:
    """The examples at `indices` of the training split, as a step takes them: the fields of
    the batch spec, in its dtypes (on the host)."""
    examples = self.dataset.read(np.asarray(indices))
    return {name: np.asarray(examples[name], field.dtype) for name, field in self.spec.items()}

  @functools.cached_property
  def functions(self) -> dict:
    """The family's functions by name ("generate", "reconstruct", ...)."""
    return self.family.make_functions(self.models, self.config)

  @property
  def num_classes(self) -> int:
    """Classes of a conditional model, 0 for an unconditional one."""
    return families.num_classes(self.config)

  @property
  def steps_per_call(self) -> int:
    """Train steps in one compiled call: `config.steps_per_call`, or where it is 0 (or not
    set), 1 on CPUs and 10 on GPUs and TPUs, whose steps are short enough that dispatching
    each from Python would leave the device idle."""
    steps = self.config.get("steps_per_call", 0)
    if steps:
      return steps
    return 1 if self.mesh.devices.flat[0].platform == "cpu" else 10

  @property
  def step_batch_size(self) -> int:
    """Examples one train step consumes: the batch, times the family's examples_per_step."""
    return self.config.batch_size * self.family.examples_per_step(self.config)

  def _init(self, key) -> TrainState:
    return self.family.init_state(self.models, self.optimizers, self.config, self.spec, key)

  @functools.cached_property
  def _state_shapes(self):
    return jax.eval_shape(self._init, jax.random.key(self.config.seed))

  def state_sharding(self):
    return sharding.state_sharding(self._state_shapes, self.mesh)

  def init_state(self) -> TrainState:
    """The initial state; with `config.init_from` (a workdir), its modules' parameters (and
    EMA weights) are that run's latest, and the optimizer, step and key start afresh."""
    state = self.jit(self._init, out_shardings=self.state_sharding())(
        jax.random.key(self.config.seed))
    init_from = self.config.get("init_from")
    if not init_from:
      return state
    restored = restore_latest(self, init_from)
    logging.info("Initialised the parameters from %s (step %d).", init_from, int(restored.step))
    return state.replace(modules={
        name: module.replace(params=restored.modules[name].params,
                             ema=None if module.ema is None else restored.modules[name].ema)
        for name, module in state.modules.items()})

  def abstract_state(self):
    """The state's shapes, dtypes and shardings, without computing it (for restoring)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self._state_shapes, self.state_sharding())

  def compile_train_step(self, state: TrainState, steps: int = 1):
    """The train step compiled once for the mesh: `(state, batch) -> (state, metrics)`.

    The step's key is derived from the state, the state is donated, and the batch (the
    family's batch spec with a leading axis of `step_batch_size`) is split over the `data`
    axis. A step whose losses or updated state are not finite keeps the previous state (only
    the step count advances, so the next step draws new noise and data) and reports
    `update_skipped` = 1.

    With `steps` > 1, one call runs that many steps in a `lax.scan`, on `steps` batches
    stacked on a leading axis (`stack_batches`); its metrics are their means over the steps,
    but for `update_skipped`, one flag per step.
    """
    train_step = self.family.make_train_step(self.models, self.optimizers, self.config)
    state_sharding = self.state_sharding()
    replicated = sharding.replicated(self.mesh)
    batched = self._batches_sharding(steps)
    batch = {name: jax.ShapeDtypeStruct((*([steps] if steps > 1 else []), self.step_batch_size,
                                         *field.shape), field.dtype, sharding=batched)
             for name, field in self.spec.items()}

    def guarded_step(state, batch):
      new, metrics = train_step(state, batch, step_key(state))
      learned = lambda s: (s.modules, s.family_state)
      finite = all_finite((metrics, learned(new)))
      # One conditional rather than a select per leaf: XLA fuses the flag's `and` over every
      # leaf into each select, a program quadratic in the number of leaves (CycleGAN's step:
      # 200,000 HLO lines, 40 s to compile).
      modules, family_state = jax.lax.cond(finite, lambda: learned(new), lambda: learned(state))
      new = new.replace(modules=modules, family_state=family_state)
      return new, {**metrics, "update_skipped": 1.0 - finite.astype(np.float32)}

    def guarded_steps(state, batches):
      state, metrics = jax.lax.scan(guarded_step, state, batches)
      skipped = metrics.pop("update_skipped")
      return state, {**jax.tree.map(lambda m: m.mean(axis=0), metrics), "update_skipped": skipped}

    return jax.jit(guarded_step if steps == 1 else guarded_steps,
                   in_shardings=(state_sharding, batched),
                   out_shardings=(state_sharding, replicated), donate_argnums=0,
                   ).lower(state, batch).compile(compiler_options=self.compiler_options)

  def _batches_sharding(self, steps: int):
    """Batches split over the `data` axis along their batch axis (behind the steps' axis)."""
    if steps == 1:
      return sharding.batch_sharding(self.mesh)
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None,
                                                                            sharding.DATA_AXIS))

  def stack_batches(self, batches: list):
    """`steps` batches on the mesh -> one [steps, B, ...] batch for a multi-step call."""
    if not hasattr(self, "_stack"):
      self._stack = jax.jit(lambda batches: jax.tree.map(lambda *b: jnp.stack(b), *batches),
                            out_shardings=self._batches_sharding(2))
    return self._stack(batches)

  def generate_function(self):
    generate = self.functions.get("generate")
    if generate is None:
      raise UsageError(f"The {self.family.name} family has no generate function: it cannot "
                       f"draw samples this way.")
    return generate

  def compile_generate(self):
    """generate(state, key, labels) -> [len(labels), ...] in model space; each device makes
    its slice. Unconditional models ignore the labels' values."""
    return self.jit(self.generate_function(), out_shardings=sharding.batch_sharding(self.mesh))

  def sample_labels(self, num: int, labels=None) -> np.ndarray:
    """The classes of `num` samples: `labels` repeated, or all classes in turn (zeros for an
    unconditional model)."""
    return families.sample_labels(self.num_classes, num, labels)

  def in_batches(self, function, batch_size: int | None = None):
    """call(state, key, inputs [N, ...]) -> NumPy outputs [N, ...] (any pytree) of a compiled
    `function(state, key, inputs [batch, ...])` run on batches of `batch_size` (default: the
    config's; a multiple of the device count) over the mesh (the last one padded by repeating
    `inputs`); batch i uses fold_in(key, i)."""
    batch_size = batch_size or self.config.batch_size
    batched = sharding.batch_sharding(self.mesh)

    def call(state, key, inputs):
      n, count = len(inputs), -(-len(inputs) // batch_size)
      padded = np.take(np.asarray(inputs), np.arange(count * batch_size) % n, axis=0)
      rows = lambda i: jax.device_put(padded[i * batch_size:(i + 1) * batch_size], batched)
      chunks = [jax.tree.map(sharding.to_host, function(state, jax.random.fold_in(key, i), rows(i)))
                for i in range(count)]
      return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *chunks)

    return call

  def sampler(self):
    """samples(state, num, key, labels=None) -> NumPy [num, ...] in model space, of the classes
    `sample_labels(num, labels)`, in batches of the config's size; batch i uses
    fold_in(key, i), so the result depends on the key and labels alone."""
    generate, batch_size = self.in_batches(self.compile_generate()), self.config.batch_size

    def samples(state, num: int, key, labels=None) -> np.ndarray:
      labels = self.sample_labels(-(-num // batch_size) * batch_size, labels)
      return generate(state, key, labels)[:num]

    return samples


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a bool scalar)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def flops_per_step(compiled) -> float:
  """FLOPs of one train step of a compiled step program, from XLA's cost analysis (0 when
  unknown). XLA counts a loop's body once, whatever its trip count, so the program of
  `steps_per_call` steps in a `lax.scan` reports one step's FLOPs too."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get("flops", 0.0))


def _check_loop_values(config) -> None:
  checks.at_least(config.num_steps, "num_steps", 0)
  for key in ("log_every", "sample_every", "checkpoint_every", "eval_every",
              "max_nonfinite_steps"):
    checks.at_least(config[key], key, 1)
  checks.at_least(config.keep_checkpoints, "keep_checkpoints", 1)
  checks.at_least(config.get("profile_steps", 0), "profile_steps", 0)
  checks.at_least(config.get("steps_per_call", 0), "steps_per_call", 0)


def _set(config, key: str, value, source: str | None = None) -> None:
  """Sets the dotted `key` of `config` to `value`, logging it when it changes a value and
  `source` (what fixes it) is given."""
  node = config
  *parents, leaf = key.split(".")
  try:
    for parent in parents:
      node = node[parent]
    current = node[leaf]
  except (KeyError, AttributeError):
    raise UsageError(f"{source or 'The data'} fixes config.{key}, which this config does not "
                     f"have: use the experiment the workdir was made with.") from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)  # As JSON stored it.
  if current != value:
    if source:
      logging.info("%s fixes config.%s=%r (the config has %r): its value wins.", source, key,
                   value, current)
    node[leaf] = value


def build(config, mesh=None, workdir: str | None = None) -> Experiment:
  """Checks the config's keys and values against the devices and the data, then builds the
  models, their family and its optimizers. With `workdir`, the values it fixes win (see the
  module docstring); the config given is not changed."""
  cli.check_required_keys(config)
  config = copy.deepcopy(config)
  fixed = {}
  for directory, source in ((config.get("init_from"), "config.init_from"), (workdir, "The workdir")):
    if directory:
      for key, value in writers.read_fixed_config(directory).items():
        _set(config, key, value, f"{source} {directory}")
        fixed[key] = value
  _check_loop_values(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(config.batch_size, mesh)
  dataset = data.load(config.dataset)
  fixed = {key: value for key, value in fixed.items() if key not in dataset.files}
  for key, value in dataset.fixed.items():
    _set(config, key, value)
    fixed[key] = value
  if workdir:
    for key, (name, _) in dataset.files.items():
      _set(config, key, os.path.join(os.path.abspath(workdir), name))
  models = models_lib.build(config.model, dataset.shape)
  family = families.get(models_lib.family(config.model))
  classes = families.num_classes(config)
  if classes and dataset.num_classes and classes != dataset.num_classes:
    raise UsageError(f"config.model.num_classes={classes}, but {dataset.name} has "
                     f"{dataset.num_classes} classes: set --config.model.num_classes="
                     f"{dataset.num_classes}.")
  family.validate(config)
  return Experiment(config, mesh, dataset, models, family,
                    family.make_optimizers(config, list(models)), fixed)


def restore_latest(experiment: Experiment, workdir: str) -> TrainState:
  """The train state of the latest checkpoint in `workdir`, placed on the experiment's mesh."""
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    if checkpointer.latest_step() is None:
      raise UsageError(
          f"No checkpoint in {checkpointer.directory}: train first (--mode=train with the same "
          f"--workdir), or point --workdir at a trained run.")
    state, _ = checkpointer.restore(experiment.abstract_state())
  return state


def sample(config, workdir: str, num_samples: int, output: str | None = None, mesh=None,
           **sample_flags) -> dict[str, np.ndarray] | str:
  """Writes `num_samples` samples of the latest checkpoint to `output`, as the family's sampler
  makes them from `sample_flags`: arrays to an .npz (for image models: "samples" in [0, 1] and
  "labels", the classes asked for with `labels`, every class in turn by default), or text,
  which is also printed. Without `output`: <workdir>/samples.npz or samples.txt.

  Deterministic for a given checkpoint, `config.seed` and flags.
  """
  experiment = build(config, mesh, workdir)
  unknown = sorted(set(sample_flags) - set(experiment.family.sample_flags))
  if unknown:
    raise UsageError(f"--{unknown[0]} is not a sampling flag of {config.model.name} (the "
                     f"{experiment.family.name} family); its flags: "
                     f"{', '.join('--' + f for f in experiment.family.sample_flags) or 'none'}.")
  if num_samples < 1:
    raise UsageError(f"--num_samples={num_samples} must be at least 1.")
  # Bad flags fail here, before a checkpoint is restored or anything compiled.
  sampler = experiment.family.make_sampler(experiment, num_samples, **sample_flags)
  state = restore_latest(experiment, workdir)
  samples = sampler(state, jax.random.fold_in(jax.random.key(config.seed), 1))
  text = isinstance(samples, str)
  output = output or os.path.join(workdir, "samples.txt" if text else "samples.npz")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if text:
      print(samples)
      with open(output, "w") as f:
        f.write(samples)
      described = f"{num_samples} text sample(s)"
    else:
      np.savez(output, **samples)
      described = ", ".join(f"{name} {tuple(np.shape(value))}" for name, value in samples.items())
    logging.info("Wrote %s of step %d to %s.", described, int(state.step), output)
  return samples
