"""The command line shared by gen's programs: the locked `--config` flag and its errors, the
experiments' configs by name (for notebooks and scripts), and the XLA and compilation-cache
settings that gen's entry points start JAX with."""
import importlib.util
import os
import sys
from importlib import metadata

from absl import flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                         lock_config=True)


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def experiments(directory: str = "experiments") -> list[str]:
  """The experiment names: the config files in `directory`."""
  if not os.path.isdir(directory):
    return []
  return sorted(f[:-3] for f in os.listdir(directory)
                if f.endswith(".py") and not f.startswith("_"))


def experiments_dir() -> str:
  """experiments/ of the checkout gen is imported from (an editable install, PYTHONPATH),
  else experiments/ of the working directory."""
  checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments")
  return checkout if os.path.isdir(checkout) else os.path.abspath("experiments")


def load_config(name: str, test_overrides: bool = False):
  """experiments/<name>.py's config, locked as --config locks it: values are changed by
  assignment (`config.num_steps = 500`), and a mistyped key raises at once.

  With `test_overrides`, the file's TEST_OVERRIDES ({dotted key: value}, where it has one) are
  set too: what it shrinks for tests and other runs of a few steps (a notebook under the
  tests), where its own model would take most of their time to compile."""
  module = experiment_module(name)
  config = module.get_config()
  config.lock()
  return set_keys(config, getattr(module, "TEST_OVERRIDES", {}) if test_overrides else {})


def test_overrides(name: str) -> dict:
  """experiments/<name>.py's TEST_OVERRIDES ({dotted key: value}; {} where it has none)."""
  return dict(getattr(experiment_module(name), "TEST_OVERRIDES", {}))


def experiment_module(name: str):
  """experiments/<name>.py as a module (its get_config and what else it defines)."""
  from gen import UsageError
  directory = experiments_dir()
  if name not in experiments(directory):
    raise UsageError(f"unknown experiment {name!r} in {directory}. Experiments: "
                     f"{', '.join(experiments(directory))}.")
  spec = importlib.util.spec_from_file_location(f"experiments.{name}",
                                                os.path.join(directory, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def set_keys(config, values: dict):
  """Sets dotted keys ("model.latent_dim") of `config`; on a locked config a key it lacks
  raises. Returns `config`."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


REQUIRED_KEYS = ("seed", "batch_size", "num_steps", "log_every", "sample_every",
                 "checkpoint_every", "eval_every", "keep_checkpoints", "max_nonfinite_steps")


def check_required_keys(config) -> None:
  """Raises UsageError naming the top-level keys every experiment config must have."""
  from gen import UsageError
  missing = [key for key in REQUIRED_KEYS if key not in config]
  if missing:
    raise UsageError(f"the config lacks the required keys {missing}; experiments/dcgan_digits.py "
                     f"shows each with its meaning.")


def experiment_as_config(argv: list[str]) -> list[str]:
  """argv with a leading experiment name replaced by --config=experiments/<name>.py."""
  if len(argv) > 1 and not argv[1].startswith("-"):
    if argv[1] not in experiments():
      fail(f"unknown experiment {argv[1]!r}. Experiments: {', '.join(experiments())}.")
    return [argv[0], f"--config=experiments/{argv[1]}.py", *argv[2:]]
  return argv


def _config_file(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """absl flag parsing, with config errors turned into one line that names the fix."""
  path = _config_file(argv)
  if path is None:
    fail("--config=experiments/<experiment>.py is required.")
  if not os.path.isfile(path):
    fail(f"config file {path!r} does not exist. Experiments: {', '.join(experiments())}.")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config does not have.
    detail = e
    while isinstance(detail, BaseException) and detail.args:  # AttributeError(KeyError(str)).
      detail = detail.args[0]
    detail = " ".join(str(detail).split())  # Its own "\nDid you mean ...?" on the same line.
    if not detail.endswith(("?", ".")):
      detail += "."
    fail(f"unknown config key in the overrides: {detail} The keys are those of get_config() in "
         f"{path}.")


class _QuietLibraries:
  """Keeps library INFO chatter (Orbax logs every file it writes) out of the run's log, and
  the tracebacks Orbax and asyncio log for a checkpoint write that failed for lack of space:
  gen's own message says which checkpoint, why and what is intact."""

  def filter(self, record) -> bool:
    library = "/orbax/" in record.pathname or record.name == "asyncio" or (
        "asyncio" in record.pathname)
    if not library:
      return True
    if record.levelno < 30:  # 30: WARNING.
      return False
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return "RESOURCE_EXHAUSTED" not in text and "No space left" not in text


def quiet_library_logs() -> None:
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())


def enable_compilation_cache(directory: str = "~/.cache/gen/xla") -> None:
  """Keeps compiled programs on disk, so a second launch skips XLA compilation.

  A directory the user gave JAX (JAX_COMPILATION_CACHE_DIR) wins. Every program is cached:
  small CPU programs compile in under JAX's default 1 s threshold and would not be.
  """
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# jaxlib versions on which XLA:CPU's YNNPACK fusions were measured slower than its other kernels.
_YNN_FUSIONS_MEASURED_SLOWER = ("0.10.2",)


def set_xla_defaults() -> None:
  """Turns off XLA:CPU's YNNPACK fusions unless XLA_FLAGS already sets them.

  On a 2-core x86 CPU they run gen's convolutions slower than XLA's other kernels: the
  dcgan_mnist step 16% and the vae_mnist step 35-40% (`python -m gen.bench`, with and
  without the flag). Only for the jaxlib versions this was measured with (the one
  constraints.txt pins), because XLA aborts on a flag it does not know and a later XLA may
  choose its kernels better. It must run before JAX starts a backend: gen.main, gen.bench
  and the tests call it first; a notebook or script may call it before its first JAX
  computation.
  """
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  current = os.environ.get("XLA_FLAGS", "")
  if version in _YNN_FUSIONS_MEASURED_SLOWER and flag not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}=".strip()
