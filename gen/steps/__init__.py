"""Train steps: pure `(state, batch, rng) -> (state, metrics)` functions, one module per family.

Each family module (`gan`, `vae`, `vaegan`, `vqvae`) provides:
  init_state(models, optimizers, config, shape, key) -> TrainState
  make_train_step(models, optimizers, config) -> train_step(state, batch, rng)
  make_generate(models, config) -> generate(state, key, labels) -> samples in model space
  make_snapshots(models, config) -> snapshots(state, batch, key) -> {name: images}
and, where it applies, make_reconstruct(models, config) -> reconstruct(state, x), and
validate(config), which raises UsageError for options that cannot work, before compiling.
"""
from typing import Any

import jax
import optax
from flax import struct

from gen import UsageError


@struct.dataclass
class TrainState:
  """Everything a run carries from step to step, and what a checkpoint stores.

  Attributes:
    step: int32 [], the number of updates applied.
    rng: the run's typed PRNG key; step s uses `fold_in(rng, s)`, so randomness is the
      same across device counts and resumes.
    params: {module name: params}.
    batch_stats: {module name: BatchNorm statistics} (empty for modules without any).
    opt_state: {module name: optax state}.
    ema: {module name: exponential moving average of its params} (empty when not kept).
  """
  step: jax.Array
  rng: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: dict[str, Any]
  ema: dict[str, Any]


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)


SCHEDULES = ("constant", "linear")


def make_optimizers(config, names) -> dict[str, optax.GradientTransformation]:
  """Adam per module, from `config.optimizer.<name>` (learning_rate, b1, b2), with the
  learning rate of `config.optimizer.schedule`: "constant", or "linear" decay to 0 at the
  last step. A module updated k times a step (the discriminator with n_critic) decays over
  k·num_steps updates. The schedule counts in the optimizer state, so resumes continue it.
  """
  schedule = config.optimizer.get("schedule", "constant")
  if schedule not in SCHEDULES:
    raise UsageError(f"config.optimizer.schedule={schedule!r}; use one of {SCHEDULES}.")
  optimizers = {}
  for name in names:
    if name not in config.optimizer:
      raise UsageError(f"config.optimizer has no entry for the model's module {name!r}.")
    adam = config.optimizer[name].to_dict()
    if schedule == "linear":
      updates = config.num_steps * (config.gan.n_critic if name == "discriminator" else 1)
      adam["learning_rate"] = optax.linear_schedule(adam["learning_rate"], 0.0, updates)
    optimizers[name] = optax.adam(**adam)
  return optimizers


def variables(state: TrainState, name: str, params=None) -> dict[str, Any]:
  """The variables to `apply` module `name` with: its params and any batch stats."""
  params = state.params[name] if params is None else params
  return {"params": params, **({"batch_stats": state.batch_stats[name]}
                               if state.batch_stats.get(name) else {})}


def init_variables(module, key, *args, **kwargs):
  """(params, batch_stats) of a freshly initialised module."""
  variables_ = module.init({"params": key}, *args, **kwargs)
  return variables_["params"], variables_.get("batch_stats", {})
