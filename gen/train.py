"""The training loop, and sampling from a trained run: the only place with side effects.

Everything below this module is pure; here live progress, logging, sample grids,
checkpoints and the data iterator.
"""
import dataclasses
import functools
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from gen import (UsageError, checkpoint, cli, data, evaluate, models as models_lib, report,
                 sharding, writers)
from gen.steps import TrainState, gan, make_optimizers, step_key, vae, vaegan, vqvae

FAMILIES = {"gan": gan, "vae": vae, "vaegan": vaegan, "vqvae": vqvae}
# Examples shown in sample grids (images) and scatter plots (2D points).
_SNAPSHOT_SIZE = {"image": 64, "points": 2500}


@dataclasses.dataclass
class Experiment:
  """What a config builds before anything is compiled."""
  config: Any
  mesh: jax.sharding.Mesh
  dataset: data.Dataset
  models: dict
  family: Any
  optimizers: dict

  @property
  def num_classes(self) -> int:
    """Classes of a conditional model, 0 for an unconditional one."""
    return self.config.model.get("num_classes", 0)

  @property
  def step_batch_size(self) -> int:
    """Examples one train step consumes: the batch, times n_critic for GANs."""
    return self.config.batch_size * (self.config.gan.n_critic if "gan" in self.config else 1)

  def init_state(self) -> TrainState:
    init = functools.partial(self.family.init_state, self.models, self.optimizers, self.config,
                             self.dataset.shape)
    return jax.jit(init, out_shardings=sharding.replicated(self.mesh))(
        jax.random.key(self.config.seed))

  def abstract_state(self):
    init = functools.partial(self.family.init_state, self.models, self.optimizers, self.config,
                             self.dataset.shape)
    shapes = jax.eval_shape(init, jax.random.key(self.config.seed))
    return checkpoint.abstract_like(shapes, sharding.replicated(self.mesh))

  def compile_train_step(self, state: TrainState):
    """The train step compiled once for the mesh: `(state, batch) -> (state, metrics)`.

    The step's key is derived from the state, the state is donated, and the batch is
    split over the `data` axis while everything else is replicated. A step whose losses or
    updated state are not finite keeps the previous state (only the step count advances,
    so the next step draws new noise and data) and reports `update_skipped` = 1.
    """
    train_step = self.family.make_train_step(self.models, self.optimizers, self.config)
    replicated, batched = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
    size = self.step_batch_size
    batch = {"x": jax.ShapeDtypeStruct((size, *self.dataset.shape), np.float32, sharding=batched),
             "label": jax.ShapeDtypeStruct((size,), np.int32, sharding=batched)}

    def guarded_step(state, batch):
      new, metrics = train_step(state, batch, step_key(state))
      learned = lambda s: (s.params, s.batch_stats, s.opt_state, s.ema)
      finite = all_finite((metrics, learned(new)))
      keep = lambda updated, previous: jnp.where(finite, updated, previous)
      params, batch_stats, opt_state, ema = jax.tree.map(keep, learned(new), learned(state))
      new = new.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema)
      return new, {**metrics, "update_skipped": 1.0 - finite.astype(np.float32)}

    return jax.jit(guarded_step, in_shardings=(replicated, batched),
                   out_shardings=(replicated, replicated), donate_argnums=0,
                   ).lower(state, batch).compile()

  def compile_generate(self):
    """generate(state, key, labels) -> [len(labels), ...] in model space; each device makes
    its slice. Unconditional models ignore the labels' values."""
    return jax.jit(self.family.make_generate(self.models, self.config),
                   out_shardings=sharding.batch_sharding(self.mesh))

  def sample_labels(self, num: int, labels=None) -> np.ndarray:
    """The classes of `num` samples: `labels` repeated, or all classes in turn (zeros for an
    unconditional model)."""
    if labels is None:
      return np.arange(num, dtype=np.int32) % max(self.num_classes, 1)
    labels = np.asarray(labels, np.int32)
    if not self.num_classes:
      raise UsageError("Labels were given, but this model is unconditional "
                       "(config.model.num_classes is 0).")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= self.num_classes:
      raise UsageError(f"Labels must be in [0, {self.num_classes}), got {labels.tolist()}.")
    return np.resize(labels, num)

  def sampler(self):
    """samples(state, num, key, labels=None) -> NumPy [num, ...] in model space, of the classes
    `sample_labels(num, labels)`, in batches of the config's size; batch i uses
    fold_in(key, i), so the result depends on the key and labels alone."""
    generate, batch_size = self.compile_generate(), self.config.batch_size
    batched = sharding.batch_sharding(self.mesh)

    def samples(state, num: int, key, labels=None) -> np.ndarray:
      labels = self.sample_labels(-(-num // batch_size) * batch_size, labels)
      chunks = [sharding.to_host(generate(state, jax.random.fold_in(key, i), jax.device_put(
          labels[i * batch_size:(i + 1) * batch_size], batched)))
                for i in range(-(-num // batch_size))]
      return np.concatenate(chunks)[:num]

    return samples


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a bool scalar)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def flops_per_step(compiled) -> float:
  """FLOPs of one call of a compiled program, from XLA's cost analysis (0 when unknown)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get("flops", 0.0))


def build(config, mesh=None) -> Experiment:
  """Validates the config against the devices and the data, then builds the models."""
  cli.check_required_keys(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(config.batch_size, mesh)
  dataset = data.load(config.dataset)
  models = models_lib.build(config.model, dataset.shape)
  family = FAMILIES[models_lib.FAMILY[config.model.name]]
  classes = config.model.get("num_classes", 0)
  if classes and dataset.num_classes and classes != dataset.num_classes:
    raise UsageError(f"config.model.num_classes={classes}, but {dataset.name} has "
                     f"{dataset.num_classes} classes: set --config.model.num_classes="
                     f"{dataset.num_classes}.")
  if hasattr(family, "validate"):
    family.validate(config)
  return Experiment(config, mesh, dataset, models, family, make_optimizers(config, models))


def _snapshot_batch(experiment: Experiment):
  """A fixed batch of real examples for grids (the first ones of the training split)."""
  num = min(_SNAPSHOT_SIZE[experiment.dataset.kind], experiment.dataset.num_examples)
  if experiment.num_classes and experiment.dataset.kind == "image":
    num = experiment.num_classes**2  # A square grid whose columns are the classes.
  return experiment.dataset.read(np.arange(num))


def _write_snapshots(workdir, step, images: dict, reference, kind, writer):
  for name, values in images.items():
    values = np.asarray(values)
    if name == "latent_scatter":  # A VAE's 2-D posterior means: rows (z1, z2, label).
      pixels = writers.latent_scatter(values[:, :2], values[:, 2].round().astype(np.int64))
    elif kind == "points":
      pixels = writers.scatter_plot(values, reference)
    else:
      pixels = writers.image_grid(values)
    prefix = "" if name == "samples" else f"{name}_"
    writers.save_png(os.path.join(workdir, "samples", f"{prefix}step_{step}.png"), pixels)
    writer.write_image(step, name, pixels)


class Stopped(Exception):
  """The run stopped before `num_steps`: a signal, or too many non-finite steps in a row.
  The message names the step and the checkpoint to resume from; `exit_code` is the
  process's exit status."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class _StopSignals:
  """SIGTERM and SIGINT ask the loop to stop after the current step; a second one exits at once.

  With several processes every process must stop at the same step, so the stop goes through
  JAX's preemption sync point, which hears SIGTERM only: SIGINT (Ctrl-C) is passed on to it
  as a SIGTERM of this process. Handlers are set only in the main thread.
  """

  def __init__(self):
    self.received = None  # The signal this process received, if any.
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      own = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
      self._previous = {sig: signal.signal(sig, self._handle) for sig in own}
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received is not None:
      print(f"{name} again: exiting at once, without a checkpoint.", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.received = signum
    logging.warning("%s: stopping after this step and writing a checkpoint (send it again to "
                    "exit at once).", name)
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption notifier.

  def stop_requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.received is not None
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)

  def describe(self) -> str:
    if self.received is not None:
      return signal.Signals(self.received).name
    return "a SIGTERM or SIGINT to a process of this run"  # Heard through JAX's sync point.

  @property
  def exit_code(self) -> int:
    return 128 + (self.received or signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and checks that this process can write to it."""
  if jax.process_index() != 0:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UsageError(f"--workdir={workdir} cannot be written ({type(e).__name__}: {e.strerror or e})"
                     f": choose a directory you can write to, e.g. --workdir=runs/<experiment>."
                     ) from e


def train(config, workdir: str, mesh=None) -> TrainState:
  """Trains to `config.num_steps`, resuming from the latest checkpoint in `workdir`.

  Raises `Stopped` when a signal or `config.max_nonfinite_steps` non-finite steps in a row
  end the run early. A signal that comes while the state is restored or the step compiles
  stops the run after its first step.
  """
  experiment = build(config, mesh)
  prepare_workdir(workdir)
  # Signals are caught from before the first computation on the mesh: in a multi-process run,
  # one process killed by Ctrl-C there would leave the others waiting in a collective.
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_checkpoints) as checkpointer, _StopSignals() as signals:
    state = _train(experiment, workdir, checkpointer, signals)
  if jax.process_index() == 0:
    logging.info("Report: %s", report.write_report(workdir)[-1])
  return state


def _train(experiment: Experiment, workdir: str, checkpointer: checkpoint.Checkpointer,
           signals: _StopSignals) -> TrainState:
  config, mesh = experiment.config, experiment.mesh
  replicated = sharding.replicated(mesh)
  data_state = None
  if checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(experiment.abstract_state())
    logging.info("Resumed from %s at step %d.", workdir, int(state.step))
  else:
    state = experiment.init_state()
  start = int(state.step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if start >= config.num_steps:
    logging.info("Step %d already reached num_steps=%d; nothing to train.", start, config.num_steps)
    return state

  compile_start = time.perf_counter()
  compiled_step = experiment.compile_train_step(state)
  step_flops = flops_per_step(compiled_step)
  logging.info("Compiled the train step in %.1f s (%.3g FLOP per step).",
               time.perf_counter() - compile_start, step_flops)

  snapshots = jax.jit(experiment.family.make_snapshots(experiment.models, config),
                      out_shardings=replicated)
  snapshot_batch = jax.device_put(_snapshot_batch(experiment), replicated)
  snapshot_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  reference = np.asarray(snapshot_batch["x"]) if experiment.dataset.kind == "points" else None

  writer = writers.MetricWriter(workdir, resume_step=start)
  evaluator = None  # Built at the first evaluation: it loads data and a feature extractor.
  best = evaluate.BestCheckpoint(workdir, config.eval.get("best_metric"))
  batches = data.DeviceIterator(experiment.dataset, experiment.step_batch_size, config.seed, mesh,
                                data_state)
  progress = tqdm(total=config.num_steps, initial=start, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=1.0)
  nonfinite = _NonFiniteSteps(config.max_nonfinite_steps)
  # Throughput counts the steps' time only: samples, checkpoints and evaluations are not steps.
  window_start, window_steps, window_pauses = time.perf_counter(), 0, 0.0
  try:
    for step in range(start + 1, config.num_steps + 1):
      state, metrics = compiled_step(state, next(batches))
      window_steps += 1
      progress.update(1)
      nonfinite.check(step, metrics.pop("update_skipped"), checkpointer)  # Of the step before.
      if step % config.log_every == 0 or step == config.num_steps:
        metrics = jax.device_get(metrics)  # With the line above, the loop's only host syncs.
        nonfinite.flush(checkpointer)
        seconds = time.perf_counter() - window_start - window_pauses
        throughput = {
            "images_per_sec": window_steps * experiment.step_batch_size / seconds,
            "gflops_per_sec": window_steps * step_flops / seconds / 1e9,
            "skipped_steps": nonfinite.total,
        }
        writer.write_scalars(step, {**metrics, **throughput})
        progress.set_postfix({k: f"{float(v):.3g}" for k, v in {**metrics, **throughput}.items()},
                             refresh=False)
        window_start, window_steps, window_pauses = time.perf_counter(), 0, 0.0
      pause_start = time.perf_counter()
      if step % config.sample_every == 0 or step == config.num_steps:
        images = jax.device_get(snapshots(state, snapshot_batch, snapshot_key))
        if jax.process_index() == 0:
          _write_snapshots(workdir, step, images, reference, experiment.dataset.kind, writer)
      stop = signals.stop_requested(step)
      if step % config.checkpoint_every == 0 or step == config.num_steps or stop:
        checkpointer.save(step, state, batches.state)
      if config.eval.metrics and step % config.eval_every == 0 and not stop:
        evaluator = evaluator or evaluate.make_evaluator(experiment, workdir)
        results = evaluator(state)
        evaluate.write(workdir, step, results)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
        best.update(step, state, batches.state, results)
      window_pauses += time.perf_counter() - pause_start
      if stop:
        checkpointer.wait()
        raise Stopped(f"Stopped by {signals.describe()} after step {step}; the checkpoint "
                      f"{checkpointer.path(step)} holds it. Run the same command to "
                      f"resume from there.", signals.exit_code)
  finally:
    best.close()
    progress.close()
    batches.close()
    writer.close()
  return state


class _NonFiniteSteps:
  """Counts skipped (non-finite) steps from the train step's `update_skipped` metric, and
  stops the run after `limit` in a row.

  Each step's flag is read one step late, once the next step is queued, so the device is
  never left idle waiting for the host.
  """

  def __init__(self, limit: int):
    self.limit, self.total, self.in_a_row = limit, 0, 0
    self._pending = None

  def check(self, step: int, update_skipped, checkpointer) -> None:
    self.flush(checkpointer)
    self._pending = (step, update_skipped)

  def flush(self, checkpointer) -> None:
    """Counts the step still pending."""
    if self._pending is None:
      return
    (step, update_skipped), self._pending = self._pending, None
    if not float(update_skipped):
      self.in_a_row = 0
      return
    self.total += 1
    self.in_a_row += 1
    logging.warning("Step %d: non-finite loss or update; the update was skipped (%d in a row, "
                    "%d in all).", step, self.in_a_row, self.total)
    if self.in_a_row >= self.limit:
      checkpointer.wait()
      last = checkpointer.latest_step()
      where = (f"the last good checkpoint is {checkpointer.path(last)} (step {last})"
               if last is not None else "no checkpoint was written")
      raise Stopped(
          f"Stopped at step {step}: {self.in_a_row} steps in a row (from step "
          f"{step - self.in_a_row + 1}) had a non-finite loss or update, and "
          f"config.max_nonfinite_steps={self.limit}; {where}. Checkpoints hold only finite "
          f"states. Lower the learning rate or check the data, then resume with the same command.",
          1)


def restore_latest(experiment: Experiment, workdir: str) -> TrainState:
  """The train state of the latest checkpoint in `workdir`, placed on the experiment's mesh."""
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    if checkpointer.latest_step() is None:
      raise UsageError(
          f"No checkpoint in {checkpointer.directory}: train first (--mode=train with the same "
          f"--workdir), or point --workdir at a trained run.")
    state, _ = checkpointer.restore(experiment.abstract_state())
  return state


def sample(config, workdir: str, num_samples: int, output: str, mesh=None, labels=None
           ) -> np.ndarray:
  """Writes `num_samples` samples of the latest checkpoint to `output` (.npz: "samples", in
  [0, 1] for images, and "labels", their classes), of the classes `labels` in turn (all
  classes in turn by default; conditional models only).

  Deterministic for a given checkpoint, `config.seed` and labels.
  """
  experiment = build(config, mesh)
  classes = experiment.sample_labels(num_samples, labels)  # Bad labels fail before restoring.
  state = restore_latest(experiment, workdir)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  samples = experiment.sampler()(state, num_samples, key, labels).astype(np.float32)
  if experiment.dataset.kind == "image":
    samples = writers.to_unit_range(samples)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, samples=samples, labels=classes)
    logging.info("Wrote %d samples of step %d to %s.", len(samples), int(state.step), output)
  return samples
