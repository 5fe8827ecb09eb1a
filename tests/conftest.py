"""Test setup: JAX on CPU with 8 virtual devices, set before JAX starts.

Single-device tests build a mesh over `jax.devices()[:1]`; subprocess tests choose
their own device count through `cli_env`.

Most of the suite's time is XLA compiling programs that then run once or a few steps: every
program is compiled with XLA's optimisations off (`UNOPTIMIZED`, through XLA_FLAGS, in this
process and in the gen processes tests start; 3x faster to compile, slower to run). A test
that runs many steps is marked `@pytest.mark.optimized` (its experiment's programs get XLA's
defaults, `OPTIMIZED`), or starts its processes with `cli_env(optimized=True)`. The digits
classifier, which evaluation needs, is trained once before the tests, optimised.
"""
import os
import pathlib
import subprocess
import sys
import tempfile

# 8 virtual devices share 2 cores with the other test worker, so a device may reach a
# collective long after the others: XLA:CPU waits 5 minutes before taking it for a hang and
# aborting. (A real hang, a step whose collectives different devices run in different
# orders, then fails in 5 minutes rather than stalling the suite.)
PATIENT_COLLECTIVES = (" --xla_cpu_collective_call_terminate_timeout_seconds=300"
                       " --xla_cpu_collective_timeout_seconds=300")
# XLA's optimisations off, and XLA:CPU's older elemental emitters in one codegen module instead
# of its fusion emitters: 2.5-3x faster to compile than optimisation level 0 alone (the
# dcgan_digits test step: 2.7 s against 9.6; gpt_pydoc's: 2.8 against 7.9). With optimisations
# on, the older emitters compile slower: gen's own defaults keep XLA's.
UNOPTIMIZED = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
               "xla_cpu_parallel_codegen_split_count": 1}
# XLA's defaults (xla/debug_options_flags.cc), for the programs of tests that run many steps.
OPTIMIZED = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True,
             "xla_cpu_parallel_codegen_split_count": 32}


def xla_flags(options: dict) -> str:
  return "".join(f" --{k}={str(v).lower()}" for k, v in options.items())


os.environ["JAX_PLATFORMS"] = "cpu"
# Unoptimised everywhere, not only in the train steps: with XLA's optimisations, LLVM spends
# seconds on a small program such as an eager jax.random.normal of a few hundred elements, which
# tests draw their inputs with: 3.6 s against 0.3 on a 2-core Zen 3, timing
#   python -c "import jax; jax.random.normal(jax.random.key(0), (2, 6, 8, 5)).block_until_ready()"
# with and without XLA_FLAGS=--xla_backend_optimization_level=0.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + PATIENT_COLLECTIVES + xla_flags(UNOPTIMIZED)).strip()
# One compilation cache for every test process and the subprocesses they start: most of the
# suite compiles the same small programs again (each train() call, each CLI run).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "gen-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from gen import cli  # noqa: E402

cli.set_xla_defaults()  # As gen's entry points do, before JAX starts.

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py")
                     if not p.stem.startswith("_"))


def load_config(name: str, **overrides):
  """experiments/<name>.py's config, locked, with dotted-key overrides ("model.latent_dim")."""
  from gen import cli
  return override(cli.load_config(name), overrides)


def override(config, values: dict):
  """Sets dotted keys ("model.latent_dim") of a locked config; unknown keys raise."""
  return cli.set_keys(config, values)


def tiny(config, **overrides):
  """A config shrunk for tests: small widths and batch, frequent outputs."""
  small = {"batch_size": 16, "log_every": 1, "sample_every": 1000, "checkpoint_every": 1000}
  model = config.model
  if model.name in ("dcgan", "infogan"):
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
  elif model.name == "gpt":  # A fixed decay horizon, so that a resumed schedule is the same.
    small.update({"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
                  "model.block_size": 16, "optimizer.gpt.decay_steps": 100,
                  "optimizer.gpt.warmup_steps": 5, "lm.snapshot_tokens": 8,
                  "eval.num_windows": 32, "eval.num_samples": 4, "eval.sample_tokens": 8})
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


def cli_env(num_devices: int = 1, optimized: bool = False) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}" + PATIENT_COLLECTIVES
  if not optimized:
    env["XLA_FLAGS"] += xla_flags(UNOPTIMIZED)
  env["PYTHONPATH"] = str(ROOT)
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture
def single_device_mesh():
  import jax
  from gen import sharding
  return sharding.make_mesh(jax.devices()[:1])



def pytest_configure(config):
  config.addinivalue_line("markers", "optimized: compile the experiment's programs with XLA's "
                                     "optimisations (a test that runs many steps)")


@pytest.fixture(autouse=True)
def _optimized_long_runs(request, monkeypatch):
  if request.node.get_closest_marker("optimized") is not None:
    from gen import experiment
    monkeypatch.setattr(experiment.Experiment, "compiler_options", OPTIMIZED)


def pytest_sessionstart(session):
  """Trains the digits classifier once, before any worker needs it (xdist's controller, or the
  only process without xdist)."""
  if hasattr(session.config, "workerinput"):
    return
  from gen import classifiers
  if not os.path.exists(classifiers.weights_path("digits")):
    # In a process with XLA's optimisations, as a gen run that needs it trains it: the weights
    # land in the cache that gen's own runs read.
    subprocess.run([sys.executable, "-c", "from gen import classifiers, cli; "
                    "cli.set_xla_defaults(); classifiers.main(['', 'digits'])"],
                   env=cli_env(optimized=True), check=True, stdout=subprocess.DEVNULL)


# tfds's unpaired cycle_gan/* (gen.data.cycle_gan), mocked with splits of different sizes.
CYCLE_GAN_SIZES = {"trainA": 5, "trainB": 7, "testA": 6, "testB": 8}


def cycle_gan_images(split: str) -> list[dict]:
  """The mocked tfds split: noise images of random sizes, different in every split (tfds's
  own mock gives every split the same examples, so it could not tell A from B)."""
  import numpy as np
  rng = np.random.default_rng(list(split.encode()))
  return [{"image": rng.integers(0, 256, (*rng.integers(20, 40, 2), 3), dtype=np.uint8),
           "label": int(split.endswith("B"))} for _ in range(CYCLE_GAN_SIZES[split])]


def mock_cycle_gan():
  """tfds mocked to give `cycle_gan/*` the splits of `cycle_gan_images`."""
  import tensorflow_datasets as tfds
  return tfds.testing.mock_data(
      as_data_source_fn=lambda builder, split, **kwargs: cycle_gan_images(split))


def cycle_gan_config(load_size=36, crop_size=32, split="train"):
  """A config.dataset of cycle_gan/horse2zebra, by default at small sizes."""
  import ml_collections
  return ml_collections.ConfigDict({"name": "cycle_gan/horse2zebra", "split": split,
                                    "load_size": load_size, "crop_size": crop_size})
