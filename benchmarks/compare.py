"""gen's train steps against the PyTorch eager references, on this machine, as a Markdown table.

  python benchmarks/compare.py [--experiments=dcgan_mnist,vae_mnist] [--batch_size=128]
                               [--steps=30] [--repeats=3] [--output=benchmarks/results.md]
                               [--readme=README.md] [--torch_channels_last]
                               [--gen_dtypes=float32,bfloat16]
  python benchmarks/compare.py --experiments=gpt_pydoc_tiny --batch_size=0     # tokens/s
  python benchmarks/compare.py --experiments=gpt_pydoc_tiny --train --repeats=1  # and quality

Each repeat runs `python -m gen.bench` and then the experiment's PyTorch reference
(benchmarks/torch_gpt.py for GPT experiments, benchmarks/torch_reference.py for the others)
for every experiment, each in a fresh process; the table reports the medians over repeats and the range.
Alternating the two spreads any drift in the machine's load over both. The table is one block
of benchmarks/results.md, headed by the CPU it ran on (model, vector extensions, cores) and the
library versions: a run on another kind of CPU adds its own block, a run on the same kind
replaces it. `--gen_dtypes=float32,bfloat16` also times gen computing in bf16 (params float32)
in the same alternation, a row of its own against the same float32 PyTorch runs: on CPUs with
AVX512_BF16 it is a different comparison, not the float32 one. `--train` (GPT experiments) also trains each side for the config's num_steps
from its defaults, seed r in repeat r, alternating, and adds a table of the validation
losses (gen's `likelihood` group; the reference on the same windows). With --readme, the README's Performance blocks (between `<!-- performance:begin
-->` and `<!-- performance:end -->`) are rewritten from results.md.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
from importlib import metadata

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# The PyTorch reference of an experiment's model (by config.model.name); the default otherwise.
REFERENCES = {"gpt": HERE / "torch_gpt.py"}
DEFAULT_REFERENCE = HERE / "torch_reference.py"


def reference(experiment: str) -> pathlib.Path:
  sys.path.insert(0, str(ROOT))
  from gen import cli
  return REFERENCES.get(cli.load_config(experiment).model.name, DEFAULT_REFERENCE)


def throughput_key(reference_result: dict) -> str:
  """The reference's one `<unit>_per_sec` number (images or tokens); gen.bench has it too."""
  (key,) = [k for k in reference_result if k.endswith("_per_sec")]
  return key


def _last_json(stdout: str) -> dict:
  """The last line of stdout that is a JSON object (the tools may log before it)."""
  for line in reversed(stdout.strip().splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  raise ValueError("no JSON object in stdout")


def _run(name: str, command: list[str], env: dict) -> dict:
  """Runs `command`, returning its JSON; on failure prints its output and exits non-zero."""
  print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode == 0:
    try:
      return _last_json(result.stdout)
    except ValueError:
      pass
  print(f"{name} failed (exit status {result.returncode}).\n--- stdout ---\n{result.stdout}"
        f"\n--- stderr ---\n{result.stderr}", file=sys.stderr)
  sys.exit(result.returncode or 1)


def versions(names) -> str:
  """"jax 0.10.2, jaxlib 0.10.2, ...": the installed versions of these packages."""
  return ", ".join(f"{name} {metadata.version(name)}" for name in names)


def _format_mfu(mfu) -> str:
  # gen.bench reports MFU as a fraction of peak; None or missing when the peak is unknown.
  return "n/a" if mfu is None else f"{100 * float(mfu):.1f}%"


def _range(values, fmt="{:.0f}") -> str:
  """"median (min-max)"."""
  median, low, high = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
  return f"{median} ({low}-{high})"


def table(rows: list[dict]) -> str:
  lines = ["| experiment | batch | unit | gen /s | PyTorch /s | gen / PyTorch | gen MFU |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
  for row in rows:
    ratios = [g / t for g, t in zip(row["gen"], row["torch"])]
    lines.append(f"| {row['experiment']} | {row['batch_size']} | {row['unit']} "
                 f"| {_range(row['gen'])} "
                 f"| {_range(row['torch'])} | {_range(ratios, '{:.2f}x')} "
                 f"| {_format_mfu(row['mfu'])} |")
  return "\n".join(lines)


BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"


def merge_block(path: pathlib.Path, heading: str, block: str) -> str:
  """results.md with `block` under `### heading`, replacing that heading's block if present."""
  text = path.read_text() if path.exists() else ""
  blocks = re.split(r"(?m)^(?=### )", text)
  kept = [b for b in blocks if b.strip() and not b.startswith(f"### {heading}\n")]
  kept.append(f"### {heading}\n\n{block.strip()}\n")
  return "\n".join(b.strip() + "\n" for b in kept)


def rewrite_readme(readme: pathlib.Path, results: str) -> None:
  text = readme.read_text()
  start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
  readme.write_text(text[:start] + "\n" + results.strip() + "\n" + text[end:])


def train_gen(experiment: str, seed: int, env: dict) -> dict:
  """gen's validation loss after training `experiment` from its defaults with `seed`."""
  import tempfile
  import time
  sys.path.insert(0, str(ROOT))
  from gen import report
  with tempfile.TemporaryDirectory(prefix="gen-compare-") as workdir:
    command = [sys.executable, "-m", "gen.main", f"--config={ROOT}/experiments/{experiment}.py",
               f"--workdir={workdir}", f"--config.seed={seed}"]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
      print(f"gen.main failed (exit status {result.returncode}).\n{result.stderr[-5000:]}",
            file=sys.stderr)
      sys.exit(result.returncode or 1)
    evals = report.read_evals(workdir)
    return {"validation_loss": evals[max(evals)]["loss"], "steps": max(evals),
            "run_seconds": seconds}


def quality_table(rows: list[dict]) -> str:
  lines = ["| experiment | steps | seed | gen validation loss | PyTorch validation loss "
           "| gen - PyTorch (nats) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for row in rows:
    gen_loss, torch_loss = row["gen"]["validation_loss"], row["torch"]["validation_loss"]
    lines.append(f"| {row['experiment']} | {row['gen']['steps']} | {row['seed']} "
                 f"| {gen_loss:.4f} | {torch_loss:.4f} | {gen_loss - torch_loss:+.4f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", nargs="+", default=["dcgan_mnist", "vae_mnist"],
                      help="names, space- or comma-separated")
  parser.add_argument("--batch_size", type=int, default=128,
                      help="0: each experiment's own config.batch_size")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
  parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
  parser.add_argument("--output", default=str(HERE / "results.md"))
  parser.add_argument("--readme", default="", help="also rewrite this README's Performance blocks")
  parser.add_argument("--train", action="store_true",
                      help="GPT experiments: also train both sides and compare validation losses")
  parser.add_argument("--gen_dtypes", default="float32",
                      help="gen's compute dtypes, comma-separated: a row each (float32, bfloat16)")
  parser.add_argument("--torch_channels_last", action="store_true",
                      help="run the PyTorch references in NHWC memory format, like gen")
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  experiments = [e for arg in args.experiments for e in arg.split(",") if e]
  dtypes = [d for d in args.gen_dtypes.split(",") if d]
  if not dtypes or set(dtypes) - {"float32", "bfloat16"}:
    parser.error(f"--gen_dtypes={args.gen_dtypes!r}: float32 and/or bfloat16, comma-separated")

  env = dict(os.environ)
  # Both sides on the CPU unless the caller chose otherwise: the comparison is per machine.
  env.setdefault("JAX_PLATFORMS", "cpu")
  flags = [f"--steps={args.steps}", "--json"]
  if args.batch_size:
    flags.append(f"--batch_size={args.batch_size}")
  references = {e: reference(e) for e in experiments}
  runs = {(e, side): [] for e in experiments for side in (*dtypes, "torch")}
  for repeat in range(args.repeats):
    for experiment in experiments:
      torch_flags = flags + (["--channels_last"] if args.torch_channels_last
                             and references[experiment] == DEFAULT_REFERENCE else [])
      for dtype in dtypes:
        runs[experiment, dtype].append(_run("gen.bench", [
            sys.executable, "-m", "gen.bench", experiment, *flags, "--nolaunches",
            f"--config.model.dtype={dtype}"], env))
      runs[experiment, "torch"].append(_run(
          references[experiment].stem,
          [sys.executable, str(references[experiment]), experiment, *torch_flags], env))
      key = throughput_key(runs[experiment, "torch"][-1])
      print(f"repeat {repeat + 1}/{args.repeats} {experiment}: "
            + "".join(f"gen {d} {runs[experiment, d][-1][key]:.0f}, " for d in dtypes) +
            f"PyTorch {runs[experiment, 'torch'][-1][key]:.0f} {key.replace('_per_sec', '/s')}",
            file=sys.stderr, flush=True)

  rows = []
  for experiment in experiments:
    torch_runs = runs[experiment, "torch"]
    key = throughput_key(torch_runs[0])
    for dtype in dtypes:
      gen_runs = runs[experiment, dtype]
      mfus = [r["mfu"] for r in gen_runs if r.get("mfu") is not None]
      label = experiment if dtype == "float32" else f"{experiment}, gen in {dtype}"
      rows.append({"experiment": label, "unit": key.removesuffix("_per_sec"),
                   "batch_size": torch_runs[0]["batch_size"],
                   "gen": [r[key] for r in gen_runs], "torch": [r[key] for r in torch_runs],
                   "mfu": statistics.median(mfus) if mfus else None})
  quality = []
  if args.train:
    for repeat in range(args.repeats):
      for experiment in experiments:
        gen_result = train_gen(experiment, repeat, env)
        torch_result = _run(references[experiment].stem, [
            sys.executable, str(references[experiment]), experiment, "--train",
            f"--seed={repeat}", "--json"], env)
        quality.append({"experiment": experiment, "seed": repeat, "gen": gen_result,
                        "torch": torch_result})
        print(f"seed {repeat} {experiment}: validation loss gen "
              f"{gen_result['validation_loss']:.4f}, PyTorch "
              f"{torch_result['validation_loss']:.4f}", file=sys.stderr, flush=True)

  from gen import bench
  report = (f"Train-step throughput, medians (and ranges) of {args.repeats} alternating runs of "
            f"{args.steps} steps each; PyTorch eager "
            f"({'NHWC' if args.torch_channels_last else 'NCHW'}); "
            f"{versions(('jax', 'jaxlib', 'flax', 'torch'))}; "
            f"`{' '.join(['python', 'benchmarks/compare.py', *(argv or sys.argv[1:])])}`."
            f"\n\n{table(rows)}\n")
  if quality:
    report += ("\nValidation loss after training from the defaults (nats per token, every "
               f"validation window):\n\n{quality_table(quality)}\n")
  print(report)
  output = pathlib.Path(args.output)
  # One block per CPU kind and set of experiments: a run of others on the same CPU adds its
  # own block rather than replacing theirs.
  merged = merge_block(output, f"{bench.describe_cpu()}: {', '.join(experiments)}", report)
  output.write_text(merged)
  if args.readme:
    rewrite_readme(pathlib.Path(args.readme), merged)


if __name__ == "__main__":
  main()
