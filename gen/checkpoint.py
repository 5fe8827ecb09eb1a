"""Checkpoints with Orbax: the train state and the data position, every N steps, keeping the last K."""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `(TrainState, data iterator state)` under `<workdir>/checkpoints/<step>/`."""

  def __init__(self, directory: str, max_to_keep: int | None = None):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict[str, Any]) -> None:
    """Starts an asynchronous save; the state may be donated to the next step right after."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state) of `step` (default: the latest), placed like `abstract_state`.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, e.g. from
    `jax.eval_shape` of the state's initialiser.
    """
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` with every leaf placed by `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
