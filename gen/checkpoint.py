"""Checkpoints with Orbax: the train state and the data position, every N steps, keeping the last K.

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves no step that looks finished. A finished step that cannot be read
(truncated or corrupted files) is moved to `<checkpoints>_unreadable/` with a warning and
the previous step is restored: it is kept for inspection, never deleted, and no longer
counts towards the K kept.
"""
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from gen import UsageError


class Checkpointer:
  """Saves and restores `(TrainState, data iterator state)` under `<workdir>/checkpoints/<step>/`.

  A context manager: leaving it waits for saves in flight and Orbax's own threads.
  """

  def __init__(self, directory: str, max_to_keep: int | None = None):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()},
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
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

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

  def _restore(self, abstract_state, step: int):
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
