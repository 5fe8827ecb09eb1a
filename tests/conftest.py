"""Test setup: JAX on CPU with 8 virtual devices, set before JAX starts.

Single-device tests build a mesh over `jax.devices()[:1]`; subprocess tests choose
their own device count through `cli_env`.
"""
import os
import pathlib
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
# One compilation cache for every test process and the subprocesses they start: most of the
# suite compiles the same small programs again (each train() call, each CLI run).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "gen-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py")
                     if not p.stem.startswith("_"))


def load_config(name: str, **overrides):
  """experiments/<name>.py's config, locked, with dotted-key overrides ("model.latent_dim")."""
  from gen import cli
  return override(cli.load_config(name), overrides)


def override(config, values: dict):
  """Sets dotted keys ("model.latent_dim") of a locked config; unknown keys raise."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def tiny(config, **overrides):
  """A config shrunk for tests: small widths and batch, frequent outputs."""
  small = {"batch_size": 16, "log_every": 1, "sample_every": 1000, "checkpoint_every": 1000}
  model = config.model
  if model.name == "dcgan":
    depth = len(model.generator_features)  # Kept: it sets the output size.
    small.update({"model.generator_features": (16,) + (8,) * (depth - 1),
                  "model.discriminator_features": (8, 16), "model.latent_dim": 8})
  elif model.name == "resnet_gan":
    small.update({"model.generator_width": 16, "model.discriminator_width": 16,
                  "model.latent_dim": 8})
  elif model.name == "vaegan":
    small.update({"model.features": (8, 16), "model.discriminator_features": (8, 16),
                  "model.latent_dim": 4})
  elif model.name == "conv_vae":
    small.update({"model.features": (8, 16), "model.latent_dim": 4})
  elif model.name == "mlp_gan":
    small.update({"model.hidden": (16, 16)})
  small.update(overrides)
  return override(config, small)


def kill_leftovers(processes) -> None:
  """Kills whatever is left of `processes` (started with start_new_session=True), children too,
  so that no test leaves a process behind."""
  import signal
  for process in processes:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()


def cli_env(num_devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["PYTHONPATH"] = str(ROOT)
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture
def single_device_mesh():
  import jax
  from gen import sharding
  return sharding.make_mesh(jax.devices()[:1])

