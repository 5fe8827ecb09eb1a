"""Checkpoints with Orbax: the train state and the data position, every N steps, keeping the last K;
and the checkpoint of the best evaluation so far.

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves no step that looks finished. A finished step that cannot be read
(truncated or corrupted files) is moved to `<checkpoints>_unreadable/` with a warning and
the previous step is restored: it is kept for inspection, never deleted, and no longer
counts towards the K kept.

Each step records the format of the state it holds (`FORMAT`); a step of another format is
refused with a message naming both, rather than a shape error.
"""
import json
import math
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from gen import UsageError

# The layout of the saved train state. 1: params, batch_stats, opt_state and ema as dicts by
# module (gen before the family interface; such steps have no "meta" item). 2: a ModuleState
# per module (gen.families).
FORMAT = 2


class Checkpointer:
  """Saves and restores `(TrainState, data iterator state)` under `<workdir>/checkpoints/<step>/`.

  A context manager: leaving it waits for saves in flight and Orbax's own threads.
  """

  def __init__(self, directory: str, max_to_keep: int | None = None):
    self.directory = os.path.abspath(directory)
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
    """Starts an asynchronous save; the state may be donated to the next step right after."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave({"format": FORMAT})))

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
      except UsageError:
        raise
      except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
        failures.append(f"step {candidate}: {type(e).__name__}: {str(e)[:300]}")
        self._set_aside(candidate, e)
    raise UsageError(
        f"No readable checkpoint in {self.directory}:\n  " + "\n  ".join(failures) +
        f"\nThey were moved to {self.directory}_unreadable/. Start afresh with a new --workdir, "
        f"or move them back if the failure was not in the files.")

  def _format(self, step: int) -> int:
    if not os.path.isdir(os.path.join(self.path(step), "meta")):
      return 1
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return int(restored.meta["format"])

  def _restore(self, abstract_state, step: int):
    stored_format = self._format(step)
    if stored_format != FORMAT:
      raise UsageError(
          f"The checkpoint {self.path(step)} holds a train state of checkpoint format "
          f"{stored_format}, and this gen reads format {FORMAT} (see gen/checkpoint.py). Train "
          f"afresh with a new --workdir, or use the gen version that wrote it.")
    check_compatible(self._manager.item_metadata(step)["state"], abstract_state, self.path(step))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def _set_aside(self, step: int, error: Exception) -> None:
    destination = os.path.join(f"{self.directory}_unreadable", str(step))
    logging.warning("Checkpoint %s cannot be read (%s: %s); moving it to %s and trying the "
                    "previous one.", self.path(step), type(error).__name__, str(error)[:300],
                    destination)
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
    self._manager.wait_until_finished()

  def close(self) -> None:
    # Orbax removes unfinished temporary steps in a background thread started by the
    # manager, and waits for it only before a save; a process that exits without saving
    # (sample, eval, an early error) would otherwise tear that thread down mid-way.
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def check_compatible(stored, abstract_state, where: str) -> None:
  """Raises UsageError naming the first leaf whose shape or dtype differs between a
  checkpoint's metadata tree and the state this config builds."""
  stored_leaves = {_name(path): leaf for path, leaf in jax.tree.leaves_with_path(stored)}
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
