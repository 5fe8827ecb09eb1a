"""Entry point: `python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=train|sample|eval|report`.

Config values are overridden with `--config.KEY=VALUE`; the config is locked, so a
mistyped key fails here, before anything is built or compiled. `--mode=sample` takes the
flags of every family's `sample_flags` (gen.families), each for the models of its family.
"""
import json
import sys

from absl import app, flags, logging

from gen import UsageError, cli, families

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "report"],
                          "train; sample (an .npz of samples); eval (the config's metrics of the "
                          "latest checkpoint, written to <workdir>/eval/<step>.json); report "
                          "(plots and summary.md from the workdir's files, without JAX).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "--mode=sample: how many samples.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs started by hand: HOST:PORT of process 0, "
    "the same for every process (SLURM and Cloud TPU are detected without it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this one's index.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "--mode=sample: the file to write: an .npz of arrays, or a .txt for "
                              "text models (default <workdir>/samples.npz or samples.txt).")


def _define_sample_flags() -> list[str]:
  """Defines the --mode=sample flags the families declare; returns their names."""
  defined = {}
  for name in families.builtin():
    for flag, (kind, default, help_text) in families.get(name).sample_flags.items():
      if flag in defined:
        if defined[flag] != kind:
          raise ValueError(f"--{flag} is declared as {defined[flag]} and {kind} by two families.")
        continue
      getattr(flags, f"DEFINE_{kind}")(flag, default, help_text)
      defined[flag] = kind
  return sorted(defined)


_SAMPLE_FLAGS = _define_sample_flags()


def main(argv):
  cli.quiet_library_logs()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.CONFIG.value
  if _WORKDIR.value is None:
    cli.fail("--workdir is required.")

  if _MODE.value == "report":  # The workdir's files only: no JAX, no checkpoint.
    from gen import report
    try:
      paths = report.write_report(_WORKDIR.value)
    except UsageError as e:
      cli.fail(str(e))
    print(paths[-1])
    return

  # Late: flag errors come before JAX starts.
  from gen import checkpoint, evaluate, experiment, sharding, train
  cli.set_xla_defaults()
  try:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cli.enable_compilation_cache()
    if _MODE.value == "train":
      logging.info("Config:\n%s", config)
      train.train(config, _WORKDIR.value)
    elif _MODE.value == "sample":
      given = {name: flags.FLAGS[name].value for name in _SAMPLE_FLAGS
               if flags.FLAGS[name].present}
      experiment.sample(config, _WORKDIR.value, _NUM_SAMPLES.value, _OUTPUT.value, **given)
    else:
      results = evaluate.evaluate_latest(config, _WORKDIR.value)
      print(json.dumps(results, indent=2))
  except UsageError as e:
    cli.fail(str(e))
  except checkpoint.WriteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except train.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
