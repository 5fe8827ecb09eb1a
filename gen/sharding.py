"""Data-parallel sharding: one `Mesh` over all devices with a `data` axis.

The train state is replicated (`state_sharding`); batches are split along their leading
axis. The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod.
"""
import importlib.util
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gen import UsageError

DATA_AXIS = "data"


def detected_cluster() -> str | None:
  """The multi-process cluster this process was started in, if any: SLURM (srun with more
  than one task) or a Cloud TPU VM (one process per host of a pod slice)."""
  in_srun_step = "SLURM_STEP_NODELIST" in os.environ and "SLURM_PROCID" in os.environ
  if in_srun_step and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  on_tpu_vm = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
  if on_tpu_vm and importlib.util.find_spec("libtpu") is not None:
    return "Cloud TPU"
  return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime when this is one process of several; a no-op otherwise.

  Explicit: all three arguments (every process gets the same coordinator address, host:port
  of process 0, and its own process id). Otherwise detected on SLURM and Cloud TPU, where
  `jax.distributed.initialize()` reads the cluster's own variables. Must run before any JAX
  computation.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise UsageError("A multi-process run needs all of --coordinator_address=HOST:PORT, "
                       "--num_processes=N and --process_id=I (0 <= I < N).")
    if not 0 <= process_id < num_processes:
      raise UsageError(f"--process_id={process_id} must be in [0, {num_processes}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif detected_cluster() is not None:
    jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# The key of a TrainState's family_state whose arrays have a leading batch axis: what a
# family keeps for each row of the batch (CycleGAN's history pools), split over the devices
# as the batch is, so that each device reads and writes only its own rows.
PER_ROW = "per_row"


def state_sharding(abstract_state, mesh: Mesh):
  """The sharding of every leaf of a train state, from its abstract shape (a pytree of
  `jax.ShapeDtypeStruct`): replicated, but for the arrays of `family_state[PER_ROW]`, split
  over the `data` axis like the batch. The one place to change to shard parameters (FSDP)."""
  sharded = jax.tree.map(lambda _: replicated(mesh), abstract_state)
  family_state = getattr(abstract_state, "family_state", None)
  if isinstance(family_state, dict) and PER_ROW in family_state:
    per_row = jax.tree.map(lambda _: batch_sharding(mesh), family_state[PER_ROW])
    sharded = sharded.replace(family_state={**sharded.family_state, PER_ROW: per_row})
  return sharded


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the `data` axis, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def join_batches(*batches: jax.Array) -> jax.Array:
  """`batches` (same shapes) as one batch whose rows interleave theirs: a0, b0, a1, b1, ...

  Inside a step, where batches are split over devices, appending one batch to another
  would move half the rows to other devices (all-gathers on every step); interleaving keeps
  each device's rows on it. `split_batches` undoes it.
  """
  return jnp.stack(batches, axis=1).reshape(len(batches) * batches[0].shape[0],
                                            *batches[0].shape[1:])


def split_batches(joined: jax.Array, n: int) -> tuple[jax.Array, ...]:
  """The `n` batches that `join_batches` joined."""
  # Sizes spelled out (here and in join_batches): -1 cannot be inferred when a trailing axis
  # is 0 wide (an InfoGAN with no continuous codes).
  rows = joined.reshape(joined.shape[0] // n, n, *joined.shape[1:])
  return tuple(rows[:, i] for i in range(n))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Fails with a message naming the fix when the global batch cannot be split evenly."""
  num_devices = mesh.devices.size
  if batch_size <= 0 or batch_size % num_devices:
    lower = max(num_devices, batch_size // num_devices * num_devices)
    raise UsageError(
        f"config.batch_size={batch_size} is the global batch and must be a positive "
        f"multiple of the device count ({num_devices} devices over "
        f"{jax.process_count()} process(es)). Use e.g. --config.batch_size={lower} "
        f"or --config.batch_size={lower + num_devices}.")
  if batch_size % jax.process_count():
    raise UsageError(f"config.batch_size={batch_size} must divide by the process count "
                     f"{jax.process_count()}.")


def process_batch_slice(batch_size: int) -> slice:
  """The rows of each global batch that this process reads and feeds."""
  per_process = batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_batch(local_batch, mesh: Mesh):
  """Assembles global `jax.Array`s from this process's rows of a batch (a pytree of arrays)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(x) -> np.ndarray:
  """A global array as one NumPy array on every process (gathered across hosts when needed)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
