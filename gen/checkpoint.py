"""Checkpoints with Orbax: the train state and the data position, every N steps, keeping the last K;
and the checkpoint of the best evaluation so far.

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves no step that looks finished. A finished step that cannot be read
(truncated or corrupted files) is moved to `<checkpoints>_unreadable/` with a warning and
the previous step is restored: it is kept for inspection, never deleted, and no longer
counts towards the K kept.

Each step records the format of the state it holds (`FORMAT`), and a digest of every array
of the state as it was saved. A restored step whose arrays do not match their digests, or are
not finite, is unreadable (set aside as above): a disk that flipped bits in the array data
cannot hand a run garbage. A step of another format is refused with a message naming both.

A save that cannot be written (a full disk) raises `WriteError`, which names the step, the
reason and the last complete checkpoint, once.
"""
import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gen import UsageError

# The layout of the saved train state. 1: params, batch_stats, opt_state and ema as dicts by
# module (gen before the family interface; such steps have no "meta" item). 2: a ModuleState
# per module (gen.families).
FORMAT = 2


class WriteError(Exception):
  """A checkpoint could not be written; the message says which, why, and what is intact."""


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error` (OSError, or Orbax's and TensorStore's) says the disk is full."""
  return (getattr(error, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in str(error)
          or "No space left" in str(error))


def _existing(path: str) -> str:
  """`path`, or its nearest ancestor that exists (the checkpoint directory appears late)."""
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _size(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory)
             for name in names)


def digests(state) -> dict[str, str]:
  """{dotted leaf name: digest of its dtype, shape and bytes} of a (replicated) state."""
  found = {}
  for path, leaf in jax.tree.leaves_with_path(state):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_shards[0].data  # Replicated: every shard holds all of it.
    array = np.asarray(jax.device_get(leaf))
    digest = hashlib.blake2b(f"{array.dtype}{array.shape}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array).tobytes())
    found[_name(path)] = digest.hexdigest()
  return found


class Unreadable(Exception):
  """A checkpoint step whose files cannot be read, or hold other arrays than were saved."""


def _check_restored(state, stored_digests: dict | None, where: str) -> None:
  """Raises Unreadable when the restored arrays differ from what was saved or are not finite."""
  if stored_digests is not None:
    restored = digests(state)
    changed = [name for name, digest in restored.items() if stored_digests.get(name) != digest]
    if changed:
      raise Unreadable(f"{len(changed)} arrays of {where} differ from what was saved (first: "
                       f"{changed[0]}): the files are damaged")
  for path, leaf in jax.tree.leaves_with_path(state):
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.isfinite(leaf).all()):
      raise Unreadable(f"{_name(path)} of {where} holds non-finite values")


class Checkpointer:
  """Saves and restores `(TrainState, data iterator state)` under `<workdir>/checkpoints/<step>/`.

  A context manager: leaving it waits for saves in flight and Orbax's own threads.
  """

  def __init__(self, directory: str, max_to_keep: int | None = None):
    self.directory = os.path.abspath(directory)
    self._writing = None  # The step of the save in flight.
    self._failed = False
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        # The directory appears with the first save: reading an empty workdir writes nothing.
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, data_state: dict[str, Any]) -> None:
    """Starts an asynchronous save; the state may be donated to the next step right after.

    Raises WriteError when the filesystem has less free space than the state's size (before
    anything is written), or when this save or the one before it (which it waits for) fails.
    """
    # The previous save first (Orbax would wait for it anyway): the free space is measured
    # with it complete, and it is the size of the next one.
    self.wait()
    # As much as the last checkpoint took (the arrays are compressed), else the arrays' size.
    latest = self._manager.latest_step()
    needed = (_size(self.path(latest)) if latest is not None else
              sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "nbytes")))
    if shutil.disk_usage(_existing(self.directory)).free < needed * 1.05 + 2**16:
      self._failed = True
      raise WriteError(self._message(step, f"a checkpoint takes {needed / 1e6:.1f} MB", None))
    meta = {"format": FORMAT, "digests": digests(state)}
    with self._writes(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)))
    self._writing = step

  @contextlib.contextmanager
  def _writes(self, step: int | None):
    """Turns Orbax's failure to write the save in flight (or `step`) into one WriteError; Orbax
    raises the same failure again on closing, which is then not repeated."""
    try:
      yield
    except Exception as error:
      if not self._failed:
        self._failed = True
        failed = self._writing if self._writing is not None else step
        self._remove_partial(failed)
        raise WriteError(self._write_error(failed, error)) from error

  def _remove_partial(self, step: int) -> None:
    """Removes what the failed save of `step` wrote: on a full disk it holds the space that a
    resumed run needs, and Orbax removes it only when a manager next opens the directory."""
    if jax.process_index() == 0:
      for partial in glob.glob(glob.escape(self.path(step)) + ".orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)

  def _write_error(self, step: int, error: Exception) -> str:
    if is_out_of_space(error):
      return self._message(step, None, None)
    text = " ".join(str(error).split())[:300]
    return self._message(step, None, f"{type(error).__name__}: {text}")

  def _message(self, step: int | None, needed: str | None, reason: str | None) -> str:
    """What could not be written, why, and the last complete checkpoint to resume from."""
    what = (f"the checkpoint of step {step} to {self.path(step)}" if step is not None
            else f"the run's logs beside {self.directory}")
    if reason is None:
      usage = shutil.disk_usage(_existing(self.directory))
      reason = (f"no space left on the filesystem of {self.directory} "
                f"({usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.1f} MB"
                f"{'; ' + needed if needed else ''})")
      fix = "free some space, or move the workdir to a larger filesystem,"
    else:
      fix = "fix the cause"
    complete = [s for s in self._manager.all_steps() if s != step]
    if complete:
      last = max(complete)
      intact = (f"The last complete checkpoint is {self.path(last)} (step {last}): {fix} and "
                f"run the same command to resume from step {last}.")
    else:
      intact = f"No checkpoint was completed before it: {fix} and run the same command again."
    return f"Could not write {what}: {reason}. {intact}"

  def out_of_space(self) -> "WriteError":
    """The error of a run whose logs (not a checkpoint) could not be written for lack of space."""
    return WriteError(self._message(None, None, None))

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state) of `step`, placed like `abstract_state` (a pytree of
    `jax.ShapeDtypeStruct` with shardings, e.g. from `jax.eval_shape` of the initialiser).

    Without `step`: the latest readable step, setting unreadable newer ones aside. Raises
    UsageError when the checkpoint holds a different model (naming the first parameter whose
    shape or dtype differs) or when no step can be read.
    """
    if step is not None:
      return self._restore(abstract_state, step)
    failures = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self._restore(abstract_state, candidate)
      except Unreadable as e:
        failures.append(f"step {candidate}: {str(e)[:300]}")
        self._set_aside(candidate, e)
    raise UsageError(
        f"No readable checkpoint in {self.directory}:\n  " + "\n  ".join(failures) +
        f"\nThey were moved to {self.directory}_unreadable/. Start afresh with a new --workdir, "
        f"or move them back if the failure was not in the files.")

  def _format(self, step: int) -> int:
    if not os.path.isdir(os.path.join(self.path(step), "meta")):
      return 1
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return int(restored.meta["format"])
    except Exception as e:
      raise Unreadable(f"{type(e).__name__}: {e}") from e

  def _restore(self, abstract_state, step: int):
    stored_format = self._format(step)
    if stored_format != FORMAT:
      raise UsageError(
          f"The checkpoint {self.path(step)} holds a train state of checkpoint format "
          f"{stored_format}, and this gen reads format {FORMAT} (see gen/checkpoint.py). Train "
          f"afresh with a new --workdir, or use the gen version that wrote it.")
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
      raise Unreadable(f"{type(e).__name__}: {e}") from e
    check_compatible(stored, abstract_state, self.path(step))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise Unreadable(f"{type(e).__name__}: {e}") from e
    _check_restored(restored.state, restored.meta.get("digests"), self.path(step))
    return restored.state, restored.data

  def _set_aside(self, step: int, error: Exception) -> None:
    destination = os.path.join(f"{self.directory}_unreadable", str(step))
    logging.warning("Checkpoint %s cannot be read (%s); moving it to %s and trying the "
                    "previous one.", self.path(step), str(error)[:300], destination)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      if os.path.exists(destination):
        shutil.rmtree(destination)  # An older copy of the same unreadable step.
      os.rename(self.path(step), destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()

  def wait(self) -> None:
    """Waits for the save in flight; WriteError when it failed."""
    with self._writes(self._writing):
      self._manager.wait_until_finished()

  def close(self) -> None:
    # Orbax removes unfinished temporary steps in a background thread started by the
    # manager, and waits for it only before a save; a process that exits without saving
    # (sample, eval, an early error) would otherwise tear that thread down mid-way.
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()
    with self._writes(self._writing):
      self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def check_compatible(stored, abstract_state, where: str) -> None:
  """Raises UsageError naming the first leaf that only one of a checkpoint's metadata tree
  and the state this config builds has, or whose shape or dtype differs between them."""
  stored_leaves = {_name(path): leaf for path, leaf in jax.tree.leaves_with_path(stored)}
  wanted_names = {_name(path) for path, _ in jax.tree.leaves_with_path(abstract_state)}
  # A leaf only the checkpoint has (an optimizer with a schedule, restored into one without)
  # would fail Orbax's restore as if the files were damaged, and set the checkpoint aside.
  extra = sorted(set(stored_leaves) - wanted_names)
  if extra:
    raise UsageError(
        f"The checkpoint {where} holds a different model or optimizer: {extra[0]} is there "
        f"and not in this config's train state. Run with the config it was trained with (its "
        f"config.json is in the workdir), or use a new --workdir for this config.")
  for path, wanted in jax.tree.leaves_with_path(abstract_state):
    if jax.dtypes.issubdtype(wanted.dtype, jax.dtypes.prng_key):
      continue  # Stored as raw key data, whose shape depends on the PRNG implementation.
    name = _name(path)
    have = stored_leaves.get(name)
    if have is None:
      problem = "is missing there"
    elif tuple(have.shape) != tuple(wanted.shape):
      problem = f"has shape {tuple(have.shape)} there and {tuple(wanted.shape)} in this config"
    elif have.dtype == wanted.dtype:
      continue
    else:
      problem = f"has dtype {have.dtype} there and {wanted.dtype} in this config"
    raise UsageError(
        f"The checkpoint {where} holds a different model: {name} {problem}. "
        f"Run with the config it was trained with (its config.json is in the workdir), or "
        f"use a new --workdir for this config.")


def _name(path) -> str:
  """A tree path as dotted names ("params.generator.Dense_0.kernel"), the same whether the
  tree is the TrainState dataclass or the checkpoint's metadata dicts."""
  return ".".join(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))
                  for key in path)


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` with every leaf placed by `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class BestCheckpoint:
  """Keeps the checkpoint with the best `metric` so far under <workdir>/checkpoints_best/, and
  its value in <workdir>/eval/best.json."""

  def __init__(self, workdir: str, metric: str | None, higher_is_better: bool = False):
    self._metric = metric
    self._better = max if higher_is_better else min
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
    if not math.isfinite(value) or (self.value is not None and
                                    self._better(value, self.value) == self.value):
      return False
    self.value = value
    self._checkpointer = self._checkpointer or Checkpointer(self._directory, 1)
    self._checkpointer.save(step, state, data_state)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(self._record), exist_ok=True)
      with open(self._record, "w") as f:
        json.dump({"metric": self._metric, "value": value, "step": step}, f)
    return True

  def close(self):
    if self._checkpointer is not None:
      self._checkpointer.close()
