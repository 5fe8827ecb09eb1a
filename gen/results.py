"""The README's results, regenerated: every offline experiment at its default config, collected.

  python -m gen.results                                  # all offline experiments, 3 seeds each
  python -m gen.results --experiments=gan_ring2d,vae_digits --seeds=1
  python -m gen.results --experiments=dcgan_digits --set=gan.ema_decay=0.999 --tag=ema

Each run trains in `<workdir>/<experiment>[/<tag>]/seed_<s>/` (an existing finished run is
not trained again) with `config.seed = s`, and its evaluations (every `eval_every` steps, and
the best) go into `docs/results.json`, keyed by experiment, tag and seed, with the commit, the
CPU and the wall time that produced them. Runs without a tag are the defaults: from them, the
README's results table (between `<!-- results:begin -->` and `<!-- results:end -->`) and the
experiments table's "measured" column are rewritten, with the median and range over seeds.
Runs with a tag (config overrides given with --set) are a sweep: they are printed as a table
and kept in the JSON, and never change the README. The digits classifier's own floor, the
real training split scored against the test split in the same features, is computed too.
"""
import datetime
import functools
import json
import os
import re
import statistics
import subprocess
import time

from absl import app, flags, logging

from gen import bench, cli, evaluate, families, models
from gen.families import median_range

FLAGS = flags.FLAGS

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# For context beside gen's own numbers: what the papers report on the same benchmarks.
PUBLISHED = {
    "gan_ring2d": "VEEGAN 8 / 52.9%, GDPP 8 / 71.7%, PacGAN2 7.9 / 95.6%",
    "gan_grid2d": "VEEGAN 24.6 / 40%, GDPP 24.8 / 68.5%, PacGAN4 24.8 / 93.6%",
}


def offline_experiments() -> list[str]:
  """The experiments whose data is one of gen's own offline datasets (no download)."""
  from gen import data
  return [name for name in cli.experiments(cli.experiments_dir())
          if cli.load_config(name).dataset.name in data.OFFLINE]


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _override(config, assignment: str) -> None:
  """Sets KEY=VALUE (dotted key; the value parsed as a Python literal where it is one)."""
  import ast
  key, _, text = assignment.partition("=")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  current = functools.reduce(lambda node, part: node[part], key.split("."), config)
  cli.set_keys(config, {key: type(current)(value) if isinstance(current, float) else value})


def run(name: str, seed: int, workdir: str, overrides=(), previous: dict | None = None) -> dict:
  """Trains `name` with `seed` (and overrides) into `workdir`, from start to finish (a run
  finished there already is not trained again: `previous` is its record); returns its
  evaluations and what produced them."""
  from gen import report, train
  config = cli.load_config(name)
  config.seed = seed
  for assignment in overrides:
    _override(config, assignment)
  if previous and os.path.exists(os.path.join(workdir, "checkpoints", str(config.num_steps))):
    return previous
  start, revision = time.perf_counter(), commit()  # What trained it, not what is there after.
  train.train(config, workdir)
  seconds = time.perf_counter() - start
  best_path = os.path.join(workdir, "eval", "best.json")
  best = None
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)
  return {"seed": seed, "num_steps": config.num_steps, "best": best, "wall_seconds": seconds,
          "evals": {str(k): v for k, v in report.read_evals(workdir).items()},
          "commit": revision, "cpu": bench.describe_cpu(),
          "date": datetime.date.today().isoformat(), "overrides": list(overrides)}


def digits_floor() -> dict:
  """gen's digits classifier features: the real training split scored against the test split
  as samples are (Fréchet distance, precision, recall, ...): what no model can beat."""
  import jax
  import numpy as np
  from gen import classifiers, data, evaluate, sharding
  mesh = sharding.make_mesh(jax.devices()[:1])
  predict = classifiers.make_predict(classifiers.load_or_train("digits"), 10)
  features = lambda split: evaluate.features(
      predict, split.read(np.arange(split.num_examples))["x"], 500, mesh)
  return {k: float(v) for k, v in evaluate.feature_metrics(features(data.digits("test")),
                                                           features(data.digits("train"))).items()}


# --- Formatting ---

def headline(name: str, results: list[dict], step: str | None = None) -> str:
  """The main numbers of experiment `name`'s runs at `step` (default: the last evaluation):
  the summaries of its config.eval.metrics groups, in their order."""
  evals = [r["evals"][step or max(r["evals"], key=int)] for r in results if r["evals"]]
  if not evals:
    return "no evaluation"
  values = {key: [e[key] for e in evals] for key in evals[0] if all(key in e for e in evals)}
  config = cli.load_config(name)
  groups = evaluate.available_groups(families.get(models.family(config.model)))
  phrases = [groups[g].summary(values) for g in config.eval.metrics if groups[g].summary]
  return "; ".join(p for p in phrases if p) or "no summary of its metrics"


def _best(results: list[dict]) -> str:
  bests = [r["best"] for r in results if r.get("best")]
  if not bests:
    return ""
  metric = bests[0]["metric"]
  steps = sorted({b["step"] for b in bests})
  return (f"best {metric} {median_range([b['value'] for b in bests], 2 if metric != 'fd' else 1)} "
          f"(at step {', '.join(f'{s:,}' for s in steps)})")


def _seconds(results) -> str:
  return f"{statistics.median(r['wall_seconds'] for r in results) / 60:.1f} min"


def table(collected: dict, floor: dict | None) -> str:
  """The README's results section: one row per experiment, the medians and ranges."""
  rows = ["| experiment | steps | seeds | result at the last step, median (range) | best "
          "checkpoint | wall time per run | published, for context |",
          "| --- | ---: | ---: | --- | --- | ---: | --- |"]
  commits, cpus = set(), set()
  for name, runs in sorted(collected.items()):
    results = sorted(runs.get("", {}).values(), key=lambda r: r["seed"])
    if not results:
      continue
    commits.update(r["commit"] for r in results)
    cpus.update(r["cpu"] for r in results)
    rows.append(f"| `{name}` | {results[0]['num_steps']:,} | {len(results)} | "
                f"{headline(name, results)} | {_best(results)} | {_seconds(results)} | "
                f"{PUBLISHED.get(name, '')} |")
  lines = [f"Generated by `python -m gen.results` (commit {', '.join(sorted(commits))}; "
           f"{'; '.join(sorted(cpus))}). Medians over the seeds 0, 1, 2, ... with the range in "
           f"brackets; every number is in `docs/results.json` with the run it came from.", "",
           *rows]
  if floor:
    lines += ["", f"The floor of the digits classifier's features, the real training split (1,438 "
              f"images) scored as samples against the test split: FD {floor['fd']:.1f}, "
              f"precision {floor['precision']:.2f}, recall {floor['recall']:.2f}, coverage "
              f"{floor['coverage']:.2f}, classifier score {floor['score']:.2f}."]
  return "\n".join(lines)


def rewrite_readme(path: str, collected: dict, floor: dict | None) -> None:
  """Rewrites the results section and the experiments table's measured column of `path`."""
  with open(path) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{path} has no {BEGIN} ... {END} section to rewrite.")
  start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
  text = text[:start] + "\n" + table(collected, floor) + "\n" + text[end:]
  for name, runs in collected.items():
    results = list(runs.get("", {}).values())
    if not results:
      continue
    seeds = f"{len(results)} seed{'s' if len(results) > 1 else ''}"
    cell = f"{headline(name, results)} ({results[0]['num_steps']:,} steps, {seeds})"
    text = re.sub(rf"^(\| `\./launch\.sh {re.escape(name)}` \|.*\|) [^|]* \|$",
                  lambda m: f"{m.group(1)} {cell} |", text, flags=re.M)
  with open(path, "w") as f:
    f.write(text)


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command (so importing gen.results
  beside gen.main, which has a --workdir of its own, is safe)."""
  flags.DEFINE_list("experiments", None, "Experiments to run (default: every "
                                   "offline one: those whose data needs no download).")
  flags.DEFINE_integer("seeds", 3, "Seeds per experiment: 0, 1, ..., N-1.")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config overrides (a sweep; needs --tag).")
  flags.DEFINE_string("tag", "", "The name of a sweep's runs (with --set).")
  flags.DEFINE_string("workdir", "runs/results", "Where the runs train.")
  flags.DEFINE_string("collected", "docs/results.json", "The collected results (JSON).")
  flags.DEFINE_string("readme", "README.md", "The README to rewrite ('' for none).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.set and not FLAGS.tag:
    raise app.UsageError("--set makes a sweep: name it with --tag.")
  cli.quiet_library_logs()
  cli.set_xla_defaults()
  cli.enable_compilation_cache()
  collected = {}
  if os.path.exists(FLAGS.collected):
    with open(FLAGS.collected) as f:
      collected = json.load(f)
  names = FLAGS.experiments or offline_experiments()
  for name in names:
    for seed in range(FLAGS.seeds):
      workdir = os.path.join(FLAGS.workdir, name, *([FLAGS.tag] if FLAGS.tag else []),
                             f"seed_{seed}")
      logging.info("%s, seed %d: %s", name, seed, workdir)
      previous = collected.get(name, {}).get(FLAGS.tag, {}).get(str(seed))
      result = run(name, seed, workdir, FLAGS.set, previous)
      collected.setdefault(name, {}).setdefault(FLAGS.tag, {})[str(seed)] = result
      os.makedirs(os.path.dirname(os.path.abspath(FLAGS.collected)), exist_ok=True)
      with open(FLAGS.collected, "w") as f:
        json.dump(collected, f, indent=1, sort_keys=True)
    runs = list(collected[name][FLAGS.tag].values())
    tag = f" [{FLAGS.tag}]" if FLAGS.tag else ""
    print(f"{name}{tag}: {headline(name, runs)}; {_best(runs)}; {_seconds(runs)} a run", flush=True)
  if FLAGS.readme and not FLAGS.tag:
    on_digits = any(cli.load_config(n).dataset.name == "digits" for n in collected)
    floor = digits_floor() if on_digits else None
    rewrite_readme(FLAGS.readme, collected, floor)
    print(f"Rewrote the results in {FLAGS.readme}.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
