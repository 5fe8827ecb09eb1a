"""The training loop: progress, logging, snapshots, checkpoints, evaluation, signals and the
data iterator. The step it runs is pure; the loop owns the side effects.
"""
import os
import signal
import sys
import tempfile
import threading
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from gen import (UsageError, checkpoint, data, evaluate, experiment as experiment_lib, report,
                 sharding, writers)
from gen.families import TrainState


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
  end the run early, and `checkpoint.WriteError` when the workdir's disk is full. A signal
  that comes while the state is restored or the step compiles stops the run after its first
  step.
  """
  experiment = experiment_lib.build(config, mesh, workdir)
  prepare_workdir(workdir)
  # Signals are caught from before the first computation on the mesh: in a multi-process run,
  # one process killed by Ctrl-C there would leave the others waiting in a collective.
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_checkpoints) as checkpointer, _StopSignals() as signals:
    try:
      state = _train(experiment, workdir, checkpointer, signals)
    except OSError as e:  # The logs, samples or evaluations: the checkpoints say so themselves.
      if not checkpoint.is_out_of_space(e):
        raise
      raise checkpointer.out_of_space() from e
  if jax.process_index() == 0:
    logging.info("Report: %s", report.write_report(workdir)[-1])
  return state


def _write_snapshots(workdir: str, step: int, rendered: dict, writer) -> None:
  """Pictures to samples/<name>_step_<n>.png and TensorBoard; text to .txt and its text tab."""
  for name, value in rendered.items():
    prefix = "" if name == "samples" else f"{name}_"
    path = os.path.join(workdir, "samples", f"{prefix}step_{step}")
    if isinstance(value, str):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(f"{path}.txt", "w") as f:
        f.write(value)
      writer.write_text(step, name, value)
    else:
      writers.save_png(f"{path}.png", value)
      writer.write_image(step, name, value)


class _Profile:
  """Traces `num_steps` steps of the run into <workdir>/plugins/profile/ (TensorBoard's profile
  plugin), from the tenth step after the run's first, so that compilation is not in it."""

  def __init__(self, workdir: str, first_step: int, num_steps: int):
    self._workdir, self._start, self._stop = workdir, first_step + 10, first_step + 10 + num_steps
    self._tracing = False

  def before(self, step: int) -> None:
    if step == self._start and self._start < self._stop and jax.process_index() == 0:
      jax.profiler.start_trace(self._workdir)
      self._tracing = True

  def after(self, step: int, state) -> None:
    if self._tracing and step + 1 >= self._stop:
      self.close(state)

  def edge(self, step: int) -> bool:
    """Whether the trace starts after `step` or ends with it (a multi-step call stops there)."""
    return self._start < self._stop and step in (self._start - 1, self._stop - 1)

  def close(self, state=None) -> None:
    if self._tracing:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info("Profile of steps %d-%d written under %s/plugins/profile/.", self._start,
                   self._stop - 1, self._workdir)


def _train(experiment, workdir: str, checkpointer: checkpoint.Checkpointer,
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
  writers.write_fixed_config(workdir, experiment.fixed, experiment.dataset.files)
  if start >= config.num_steps:
    logging.info("Step %d already reached num_steps=%d; nothing to train.", start, config.num_steps)
    return state

  # Everything evaluation needs (the evaluation split, weights files, classifiers, reference
  # features) is loaded before the first step, so that a missing one fails now, not at the
  # first evaluation thousands of steps later.
  evaluations = config.num_steps // config.eval_every - start // config.eval_every
  evaluator = (evaluate.make_evaluator(experiment, workdir)
               if config.eval.metrics and evaluations > 0 else None)

  compile_start = time.perf_counter()
  per_call = experiment.steps_per_call
  compiled = {per_call: experiment.compile_train_step(state, per_call)}
  step_flops = experiment_lib.flops_per_step(compiled[per_call])
  logging.info("Compiled the train step%s in %.1f s (%.3g FLOP per step).",
               f" ({per_call} steps a call)" if per_call > 1 else "",
               time.perf_counter() - compile_start, step_flops)

  family = experiment.family
  make_snapshots = family.make_snapshots(experiment.models, config)
  snapshots = make_snapshots and experiment.jit(make_snapshots, out_shardings=replicated)
  snapshot_batch = family.snapshot_batch(config, experiment.dataset)
  render_snapshots = family.snapshot_renderer(config, experiment.dataset)
  snapshot_inputs = jax.device_put(snapshot_batch, replicated)
  snapshot_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  unit, per_example = family.throughput_unit(config)

  writer = writers.MetricWriter(workdir, resume_step=start)
  best_metric = config.eval.get("best_metric")
  higher_is_better = bool(best_metric) and evaluate.higher_is_better(experiment, best_metric)
  best = checkpoint.BestCheckpoint(workdir, best_metric, higher_is_better)
  batches = data.DeviceIterator(experiment.dataset, experiment.step_batch_size, config.seed, mesh,
                                data_state, spec=experiment.spec)
  progress = tqdm(total=config.num_steps, initial=start, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=1.0)
  nonfinite = _NonFiniteSteps(config.max_nonfinite_steps)
  profile = _Profile(workdir, start + 1, config.get("profile_steps", 0))
  # Throughput counts the steps' time only: samples, checkpoints and evaluations are not steps.
  window_start, window_steps, window_pauses = time.perf_counter(), 0, 0.0
  def outputs_due(step: int) -> bool:
    """Whether the loop has something to do after `step`: log, sample, save, evaluate, trace."""
    return (step % config.log_every == 0 or step % config.sample_every == 0
            or step % config.checkpoint_every == 0 or step == config.num_steps
            or bool(evaluator) and step % config.eval_every == 0 or profile.edge(step))

  try:
    step = start
    while step < config.num_steps:
      # A call runs steps_per_call steps where no output falls inside them, else one step.
      calls = per_call if all(not outputs_due(s) for s in range(step + 1, step + per_call)) and (
          step + per_call <= config.num_steps) else 1
      if calls not in compiled:
        compiled[calls] = experiment.compile_train_step(state, calls)
      profile.before(step + 1)
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        batch = next(batches) if calls == 1 else experiment.stack_batches(
            [next(batches) for _ in range(calls)])
        state, metrics = compiled[calls](state, batch)
      first, step = step + 1, step + calls
      profile.after(step, state)
      window_steps += calls
      progress.update(calls)
      nonfinite.check(first, metrics.pop("update_skipped"), checkpointer)  # Of the call before.
      if step % config.log_every == 0 or step == config.num_steps:
        metrics = jax.device_get(metrics)  # With the line above, the loop's only host syncs.
        nonfinite.flush(checkpointer)
        seconds = time.perf_counter() - window_start - window_pauses
        throughput = {
            f"{unit}_per_sec": window_steps * experiment.step_batch_size * per_example / seconds,
            "gflops_per_sec": window_steps * step_flops / seconds / 1e9,
            "skipped_steps": nonfinite.total,
        }
        writer.write_scalars(step, {**metrics, **throughput})
        progress.set_postfix({k: f"{float(v):.3g}" for k, v in {**metrics, **throughput}.items()},
                             refresh=False)
        window_start, window_steps, window_pauses = time.perf_counter(), 0, 0.0
      pause_start = time.perf_counter()
      if snapshots and (step % config.sample_every == 0 or step == config.num_steps):
        outputs = jax.device_get(snapshots(state, snapshot_inputs, snapshot_key))
        if jax.process_index() == 0:
          _write_snapshots(workdir, step, render_snapshots(outputs, snapshot_batch), writer)
      stop = signals.stop_requested(step)
      if step % config.checkpoint_every == 0 or step == config.num_steps or stop:
        checkpointer.save(step, state, batches.state)
      if evaluator and step % config.eval_every == 0 and not stop:
        results = evaluator(state)
        writers.write_eval(workdir, step, results)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
        best.update(step, state, batches.state, results)
      window_pauses += time.perf_counter() - pause_start
      if stop:
        checkpointer.wait()
        raise Stopped(f"Stopped by {signals.describe()} after step {step}; the checkpoint "
                      f"{checkpointer.path(step)} holds it. Run the same command to "
                      f"resume from there.", signals.exit_code)
  finally:
    _close_all(lambda: profile.close(state), best.close, progress.close, batches.close,
               writer.close)
  return state


def _close_all(*closes) -> None:
  """Calls each of `closes`. While an error propagates, their own errors (a full disk fails
  every writer) are logged rather than raised, so the first one is what the user sees."""
  propagating = sys.exc_info()[1] is not None
  for close in closes:
    try:
      close()
    except Exception as e:
      if not propagating:
        raise
      logging.warning("While stopping: %s: %s", type(e).__name__, e)


class _NonFiniteSteps:
  """Counts skipped (non-finite) steps from the train step's `update_skipped` metric, and
  stops the run after `limit` in a row.

  Each step's flag is read one step late, once the next step is queued, so the device is
  never left idle waiting for the host.
  """

  def __init__(self, limit: int):
    self.limit, self.total, self.in_a_row = limit, 0, 0
    self._pending = None

  def check(self, first_step: int, update_skipped, checkpointer) -> None:
    """Queues the flags of the steps from `first_step` (one, or one per step of a call)."""
    self.flush(checkpointer)
    self._pending = (first_step, update_skipped)

  def flush(self, checkpointer) -> None:
    """Counts the steps still pending."""
    if self._pending is None:
      return
    (first_step, update_skipped), self._pending = self._pending, None
    for step, skipped in enumerate(np.atleast_1d(np.asarray(update_skipped)), first_step):
      self._count(step, bool(skipped), checkpointer)

  def _count(self, step: int, skipped: bool, checkpointer) -> None:
    if not skipped:
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
