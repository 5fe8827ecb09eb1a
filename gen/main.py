"""Entry point: `python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=train|sample|eval|report`.

Config values are overridden with `--config.KEY=VALUE`; the config is locked, so a
mistyped key fails here, before anything is built or compiled.
"""
import json
import os
import sys

from absl import app, flags, logging

from gen import UsageError, cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "report"],
                          "train; sample (an .npz of samples); eval (the config's metrics of the "
                          "latest checkpoint, written to <workdir>/eval/<step>.json); report "
                          "(plots and summary.md from the workdir's files, without JAX).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "--mode=sample: how many samples.")
_LABELS = flags.DEFINE_list("labels", None, "--mode=sample, conditional models: the classes "
                            "to sample, in turn (e.g. 0,1,2); default: every class in turn.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs started by hand: HOST:PORT of process 0, "
    "the same for every process (SLURM and Cloud TPU are detected without it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this one's index.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "--mode=sample: the .npz to write (default <workdir>/samples.npz).")



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

  from gen import evaluate, sharding, train  # Late: flag errors come before JAX starts.
  try:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    cli.enable_compilation_cache()
    if _MODE.value == "train":
      logging.info("Config:\n%s", config)
      train.train(config, _WORKDIR.value)
    elif _MODE.value == "sample":
      output = _OUTPUT.value or os.path.join(_WORKDIR.value, "samples.npz")
      labels = None
      if _LABELS.value is not None:
        try:
          labels = [int(label) for label in _LABELS.value]
        except ValueError:
          cli.fail(f"--labels={','.join(_LABELS.value)}: give integer classes, e.g. --labels=0,1,2.")
      train.sample(config, _WORKDIR.value, _NUM_SAMPLES.value, output, labels=labels)
    else:
      results = evaluate.evaluate_latest(config, _WORKDIR.value)
      print(json.dumps(results, indent=2))
  except UsageError as e:
    cli.fail(str(e))
  except train.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
