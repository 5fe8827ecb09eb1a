"""A run's report, from the files in its workdir alone: curves, the last sample grid, summary.md.

  python -m gen.main --config=experiments/<name>.py --workdir=DIR --mode=report

Reads config.json, metrics.jsonl, eval/<step>.json and samples/step_<n>.png, and writes
report/losses.png, report/metrics.png, report/samples.png and summary.md. It needs neither
JAX nor a checkpoint, so the training loop runs it at the end of every run. The plotting
functions return matplotlib figures, which notebooks show inline.
"""
import json
import math
import os
import re
import shutil
import statistics

from gen import UsageError

# Scalars of metrics.jsonl that measure the run rather than the model: not plotted as losses.
# The loop logs <unit>_per_sec in the unit its family counts (images, tokens) and gflops_per_sec.
_THROUGHPUT = re.compile(r"^(\w+)_per_sec$")
_NOT_PLOTTED = {"step", "time", "skipped_steps"}
# Keys of eval/<step>.json that time the evaluation rather than score the model.
_EVAL_TIMINGS = re.compile(r"(^step$|eval_seconds$|_per_sec$)")
_STEP_FILE = re.compile(r"^(\d+)\.json$")


def read_metrics(workdir: str) -> list[dict]:
  """The records of <workdir>/metrics.jsonl, in the order they were written."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise UsageError(f"No metrics.jsonl in {workdir}: train first (--mode=train with the same "
                     "--workdir), or point --workdir at a trained run.")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_evals(workdir: str) -> dict[int, dict[str, float]]:
  """{step: {metric: value}} of <workdir>/eval/<step>.json, without the evaluation's timings."""
  directory = os.path.join(workdir, "eval")
  evals = {}
  for name in os.listdir(directory) if os.path.isdir(directory) else ():
    match = _STEP_FILE.match(name)  # Not best.json, nor the cached reference features.
    if match:
      with open(os.path.join(directory, name)) as f:
        record = json.load(f)
      evals[int(match.group(1))] = {k: float(v) for k, v in record.items()
                                    if not _EVAL_TIMINGS.search(k)}
  return dict(sorted(evals.items()))


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
  """{scalar: (steps, values)} of the training scalars (losses, logits, KL weights; not
  throughput, time or eval/*), finite values only, one value per step: a step logged twice
  (a run resumed from an earlier checkpoint) keeps its latest value."""
  by_name = {}
  for record in records:
    for name, value in record.items():
      if name in _NOT_PLOTTED or name.startswith("eval/") or _THROUGHPUT.match(name):
        continue
      by_name.setdefault(name, {})[record["step"]] = value
  series = {name: _finite_sorted(values) for name, values in sorted(by_name.items())}
  return {name: (steps, values) for name, (steps, values) in series.items() if steps}


def _finite_sorted(values: dict) -> tuple[list[int], list[float]]:
  pairs = sorted((step, float(v)) for step, v in values.items()
                 if v is not None and math.isfinite(float(v)))
  return [s for s, _ in pairs], [v for _, v in pairs]


def loss_panel(name: str) -> str:
  """The panel of a training scalar: curves read against each other share one (d_loss with
  g_loss, d_real_logit with d_fake_logit)."""
  return re.sub(r"(^|_)(real|fake)_", r"\1", re.sub(r"^[dg]_", "", name))


def plot_curves(series: dict[str, tuple[list, list]], title: str, panel=lambda name: name,
                columns: int = 3):
  """Named (steps, values) series -> a matplotlib Figure, one subplot per `panel(name)`."""
  # A Figure of its own, not pyplot's: rendered by Agg when saved, whatever the backend
  # (headless training machines), and no global state to disturb in a notebook.
  from matplotlib.figure import Figure
  panels = {}
  for name, points in series.items():
    panels.setdefault(panel(name), {})[name] = points
  columns = min(columns, max(len(panels), 1))
  rows = max(math.ceil(len(panels) / columns), 1)
  width, height = 4 * columns, 3 * rows
  figure = Figure(figsize=(width, height))
  figure.suptitle(title, y=1 - 0.08 / height, va="top")
  # Margins fixed in inches rather than a constrained layout, which measures every tick label
  # again: the same look with short labels, and faster (every run writes its report).
  axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
      left=0.6 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.8 / height,
      wspace=0.3, hspace=0.5)).ravel()
  for ax, (name, members) in zip(axes, panels.items()):
    for label, (steps, values) in members.items():
      # Markers where there are few points: a run logged once still shows its value.
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    ax.set_title(", ".join(members))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(members) > 1:
      ax.legend(fontsize="small")
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  if not panels:
    figure.text(0.5, 0.5, "no finite values", ha="center", va="center")
  return figure


def plot_losses(records: list[dict]):
  """The training scalars of metrics.jsonl records over steps."""
  return plot_curves(curves(records), "training", panel=loss_panel)


def plot_metrics(evals: dict[int, dict[str, float]]):
  """Each evaluation metric over steps, from read_evals."""
  by_name = {}
  for step, results in evals.items():
    for name, value in results.items():
      by_name.setdefault(name, {})[step] = value
  series = {name: _finite_sorted(values) for name, values in sorted(by_name.items())}
  return plot_curves({name: (steps, values) for name, (steps, values) in series.items() if steps},
                     "evaluation")


def plot_image(pixels, title: str | None = None, inches_per_pixel: float = 0.015):
  """A uint8 image [H, W, C] (a writers.image_grid) -> a Figure showing it, pixels as squares."""
  from matplotlib.figure import Figure
  height, width = pixels.shape[:2]
  size = lambda pixels: min(max(pixels * inches_per_pixel, 2.0), 10.0)
  figure = Figure(figsize=(size(width), size(height) + (0.3 if title else 0.0)),
                  layout="constrained")
  ax = figure.add_subplot()
  ax.imshow(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels, cmap="gray",
            interpolation="nearest", vmin=0, vmax=255)
  ax.set_axis_off()
  if title:
    ax.set_title(title)
  return figure


def latest_samples(workdir: str, kind: str = "samples", extension: str = "png") -> str | None:
  """The path of the last grid (or, with extension "txt", text) the run wrote of `kind`
  ("samples", "reconstructions", ...)."""
  prefix = "" if kind == "samples" else f"{kind}_"
  pattern = re.compile(rf"^{re.escape(prefix)}step_(\d+)\.{extension}$")
  directory = os.path.join(workdir, "samples")
  found = [(int(m.group(1)), name) for name in (os.listdir(directory) if os.path.isdir(directory)
                                                 else ()) if (m := pattern.match(name))]
  return os.path.join(directory, max(found)[1]) if found else None


def _finite(records: list[dict], key: str) -> list[float]:
  return [float(r[key]) for r in records if key in r and math.isfinite(float(r[key]))]


def _duration(seconds: float) -> str:
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _table(rows: dict[str, float]) -> list[str]:
  return ["| metric | value |", "| --- | ---: |", *(f"| {k} | {v:.4g} |" for k, v in rows.items())]


def summary(workdir: str, config: dict | None, records: list[dict], evals: dict,
            images: dict[str, str], text_samples: str | None = None) -> str:
  """summary.md: what ran, how far, how fast, how well, with links to the report's images."""
  final_step = max(r["step"] for r in records) if records else 0
  lines = [f"# {os.path.basename(os.path.abspath(workdir))}", ""]
  if config:
    model, dataset = config.get("model", {}), config.get("dataset", {})
    lines.append(f"{model.get('name', '?')} on {dataset.get('name', '?')}, batch "
                 f"{config.get('batch_size', '?')}, seed {config.get('seed', '?')}.")
    lines.append("")
  of_total = f" of {config['num_steps']}" if config and "num_steps" in config else ""
  lines.append(f"- Final step: {final_step}{of_total}")
  units = sorted({m.group(1) for r in records for k in r if (m := _THROUGHPUT.match(k))} -
                 {"gflops"})
  gflops = _finite(records, "gflops_per_sec")
  for unit in units:
    per_sec = _finite(records, f"{unit}_per_sec")
    rate = f", {statistics.median(gflops):.2f} GFLOP/s" if any(gflops) else ""
    lines.append(f"- Throughput, median of {len(per_sec)} logged steps: "
                 f"{statistics.median(per_sec):.1f} {unit}/s{rate}")
  skipped = max((r.get("skipped_steps", 0) for r in records), default=0)
  if skipped:
    lines.append(f"- Steps skipped for a non-finite loss or update: {skipped:.0f}")
  times = [r["time"] for r in records if "time" in r]
  if len(times) > 1:
    lines.append(f"- Wall time from the first to the last logged step: "
                 f"{_duration(max(times) - min(times))}")
  else:
    lines.append("- Wall time: unknown (metrics.jsonl has no timestamps to compare)")
  last = {name: values[-1] for name, (_, values) in curves(records).items()}
  if last:
    lines += ["", "## Final training scalars", "", *_table(last)]
  if evals:
    step = max(evals)
    lines += ["", f"## Evaluation at step {step}", "", *_table(evals[step])]
  if images:
    lines += ["", "## Plots", ""]
    lines += [f"![{label}]({os.path.relpath(path, workdir)})" for label, path in images.items()]
  if text_samples:
    with open(text_samples) as f:
      lines += ["", f"## Samples, {os.path.splitext(os.path.basename(text_samples))[0]}", "",
                f.read().rstrip("\n")]
  if config:
    lines += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```"]
  return "\n".join(lines) + "\n"


def write_report(workdir: str) -> list[str]:
  """Writes report/{losses,metrics,samples}.png (those there is data for) and summary.md into
  `workdir`; returns the paths written. UsageError when the run has logged nothing."""
  records = read_metrics(workdir)
  evals = read_evals(workdir)
  config_path = os.path.join(workdir, "config.json")
  config = None
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  directory = os.path.join(workdir, "report")
  os.makedirs(directory, exist_ok=True)
  images = {}  # {label in summary.md: path}
  if curves(records):
    images["training scalars"] = os.path.join(directory, "losses.png")
    plot_losses(records).savefig(images["training scalars"], dpi=100)
  if evals:
    images["evaluation metrics"] = os.path.join(directory, "metrics.png")
    plot_metrics(evals).savefig(images["evaluation metrics"], dpi=100)
  samples = latest_samples(workdir)
  if samples:
    label = f"samples, {os.path.splitext(os.path.basename(samples))[0].replace('_', ' ')}"
    images[label] = os.path.join(directory, "samples.png")
    shutil.copyfile(samples, images[label])
  summary_path = os.path.join(workdir, "summary.md")
  with open(summary_path, "w") as f:
    f.write(summary(workdir, config, records, evals, images,
                    latest_samples(workdir, extension="txt")))
  return [*images.values(), summary_path]
