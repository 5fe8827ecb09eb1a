"""gen's train steps against the PyTorch eager references, on this machine, as a Markdown table.

  python benchmarks/compare.py [--experiments=dcgan_mnist,vae_mnist] [--batch_size=128]
                               [--steps=30] [--repeats=3] [--output=benchmarks/results.md]
                               [--readme=README.md] [--torch_channels_last]

Each repeat runs `python -m gen.bench` and then benchmarks/torch_reference.py for every
experiment, each in a fresh process; the table reports the medians over repeats and the range.
Alternating the two spreads any drift in the machine's load over both. The table is one block
of benchmarks/results.md, headed by the CPU it ran on (model, vector extensions, cores) and the
library versions: a run on another kind of CPU adds its own block, a run on the same kind
replaces it; with --readme, the README's Performance blocks (between `<!-- performance:begin
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
REFERENCE = HERE / "torch_reference.py"


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


def _format_mfu(mfu) -> str:
  # gen.bench reports MFU as a fraction of peak; None or missing when the peak is unknown.
  return "n/a" if mfu is None else f"{100 * float(mfu):.1f}%"


def _range(values, fmt="{:.0f}") -> str:
  """"median (min-max)"."""
  median, low, high = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
  return f"{median} ({low}-{high})"


def table(rows: list[dict]) -> str:
  lines = ["| experiment | batch | gen img/s | PyTorch img/s | gen / PyTorch | gen MFU |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for row in rows:
    ratios = [g / t for g, t in zip(row["gen"], row["torch"])]
    lines.append(f"| {row['experiment']} | {row['batch_size']} | {_range(row['gen'])} "
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", nargs="+", default=["dcgan_mnist", "vae_mnist"],
                      help="names, space- or comma-separated")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
  parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
  parser.add_argument("--output", default=str(HERE / "results.md"))
  parser.add_argument("--readme", default="", help="also rewrite this README's Performance blocks")
  parser.add_argument("--torch_channels_last", action="store_true",
                      help="run the PyTorch references in NHWC memory format, like gen")
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  experiments = [e for arg in args.experiments for e in arg.split(",") if e]

  env = dict(os.environ)
  # Both sides on the CPU unless the caller chose otherwise: the comparison is per machine.
  env.setdefault("JAX_PLATFORMS", "cpu")
  flags = [f"--batch_size={args.batch_size}", f"--steps={args.steps}", "--json"]
  torch_flags = flags + (["--channels_last"] if args.torch_channels_last else [])
  flags.append("--nolaunches")
  runs = {(e, side): [] for e in experiments for side in ("gen", "torch")}
  for repeat in range(args.repeats):
    for experiment in experiments:
      runs[experiment, "gen"].append(
          _run("gen.bench", [sys.executable, "-m", "gen.bench", experiment, *flags], env))
      runs[experiment, "torch"].append(_run(
          "torch_reference", [sys.executable, str(REFERENCE), experiment, *torch_flags], env))
      print(f"repeat {repeat + 1}/{args.repeats} {experiment}: "
            f"gen {runs[experiment, 'gen'][-1]['images_per_sec']:.0f} img/s, "
            f"PyTorch {runs[experiment, 'torch'][-1]['images_per_sec']:.0f} img/s",
            file=sys.stderr, flush=True)

  rows = []
  for experiment in experiments:
    gen_runs = runs[experiment, "gen"]
    mfus = [r["mfu"] for r in gen_runs if r.get("mfu") is not None]
    rows.append({"experiment": experiment, "batch_size": args.batch_size,
                 "gen": [r["images_per_sec"] for r in gen_runs],
                 "torch": [r["images_per_sec"] for r in runs[experiment, "torch"]],
                 "mfu": statistics.median(mfus) if mfus else None})
  from gen import bench
  versions = ", ".join(f"{name} {metadata.version(name)}"
                       for name in ("jax", "jaxlib", "flax", "torch"))
  report = (f"Train-step throughput, medians (and ranges) of {args.repeats} alternating runs of "
            f"{args.steps} steps each; PyTorch eager "
            f"({'NHWC' if args.torch_channels_last else 'NCHW'}); {versions}; "
            f"`{' '.join(['python', 'benchmarks/compare.py', *(argv or sys.argv[1:])])}`."
            f"\n\n{table(rows)}\n")
  print(report)
  output = pathlib.Path(args.output)
  merged = merge_block(output, bench.describe_cpu(), report)
  output.write_text(merged)
  if args.readme:
    rewrite_readme(pathlib.Path(args.readme), merged)


if __name__ == "__main__":
  main()
