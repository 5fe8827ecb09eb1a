"""Entry point: `python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=train|sample`.

Config values are overridden with `--config.KEY=VALUE`; the config is locked, so a
mistyped key fails here, before anything is built or compiled.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "--mode=sample: how many samples.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "--mode=sample: the .npz to write (default <workdir>/samples.npz).")

REQUIRED_KEYS = ("seed", "batch_size", "num_steps", "log_every", "sample_every",
                 "checkpoint_every", "eval_every")


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


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
    _fail("--config=experiments/<experiment>.py is required.")
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir("experiments") if f.endswith(".py")
                   and not f.startswith("_")) if os.path.isdir("experiments") else []
    _fail(f"config file {path!r} does not exist. Experiments: {', '.join(known)}.")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config does not have.
    detail = e.args[0] if e.args else e
    _fail(f"unknown config key in the overrides: {detail}. The config file {path} lists the "
          f"keys; run with --config={path} alone to see them.")


class _QuietLibraries:
  """Keeps library INFO chatter (Orbax logs every file it writes) out of the run's log."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname  # 30: WARNING.


def main(argv):
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  missing = [key for key in REQUIRED_KEYS if key not in config]
  if missing:
    _fail(f"the config lacks required keys {missing}.")
  if _WORKDIR.value is None:
    _fail("--workdir is required.")

  from gen import UsageError, train  # Imported late so that flag errors come before JAX starts.
  try:
    if _MODE.value == "train":
      logging.info("Config:\n%s", config)
      train.train(config, _WORKDIR.value)
    else:
      output = _OUTPUT.value or os.path.join(_WORKDIR.value, "samples.npz")
      train.sample(config, _WORKDIR.value, _NUM_SAMPLES.value, output)
  except UsageError as e:
    _fail(str(e))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
