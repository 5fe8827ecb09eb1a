"""Where a run's outputs go: scalars to the console, metrics.jsonl and TensorBoard; images to
PNG and TensorBoard; text to files and TensorBoard's text tab.

Only process 0 writes; other processes get writers that do nothing.
"""
import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from gen import data


def to_unit_range(images) -> np.ndarray:
  """Model space [-1, 1] -> float32 NumPy in [0, 1], the range of every image that leaves gen."""
  return data.to_unit_range(np.asarray(images, np.float32))


def image_grid(images, columns: int | None = None, pad: int = 1, min_size: int = 32) -> np.ndarray:
  """images [N, H, W, C] in [-1, 1] -> one uint8 grid [rows·(H+pad)+pad, ..., C].

  Images smaller than `min_size` pixels are enlarged by pixel repetition, so that an
  8x8 digit is legible in the PNG.
  """
  images = to_unit_range(images)
  scale = max(1, min_size // images.shape[1])
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  if columns is None:
    columns = math.ceil(math.sqrt(n))
    columns += columns % 2  # Even, so input/reconstruction pairs stay side by side.
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):(r + 1) * (h + pad), pad + col * (w + pad):(col + 1) * (w + pad)] = image
  return (grid * 255).round().astype(np.uint8)


def scatter_plot(points, reference=None, size: int = 400, extent: float = 5.5) -> np.ndarray:
  """points [N, 2] (red) over optional reference points (grey) -> uint8 RGB [size, size, 3]."""
  canvas = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(canvas)
  to_pixel = lambda p: (p + extent) / (2 * extent) * (size - 1)
  for xy, colour in ((reference, (170, 170, 170)), (points, (200, 30, 30))):
    if xy is None:
      continue
    for x, y in to_pixel(np.asarray(xy, np.float32)):
      draw.point((float(x), float(size - 1 - y)), fill=colour)
  return np.asarray(canvas)


# Matplotlib's tab10: ten colours told apart at a glance, one per class (cycled beyond ten).
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def latent_scatter(points, labels, size: int = 400, margin: int = 12) -> np.ndarray:
  """2-D latent codes [N, 2] as dots coloured by their integer labels [N] -> uint8 RGB
  [size, size, 3], on square axes fitted to the points (the origin's axes in grey), with a
  legend of the labels' colours in the top-left corner."""
  points = np.asarray(points, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  canvas = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(canvas)
  finite = np.all(np.isfinite(points), axis=-1)
  extent = max(float(np.abs(points[finite]).max()) if finite.any() else 0.0, 1e-6) * 1.05
  to_pixel = lambda v: margin + (v + extent) / (2 * extent) * (size - 1 - 2 * margin)
  centre = to_pixel(0.0)
  draw.line([(margin, centre), (size - 1 - margin, centre)], fill=(210, 210, 210))
  draw.line([(centre, margin), (centre, size - 1 - margin)], fill=(210, 210, 210))
  for (x, y), label in zip(points[finite], labels[finite]):
    px, py = to_pixel(x), size - 1 - to_pixel(y)
    draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=_PALETTE[label % len(_PALETTE)])
  for row, label in enumerate(np.unique(labels)[:(size - 8) // 12]):
    top = 4 + 12 * row
    draw.rectangle((4, top, 12, top + 8), fill=_PALETTE[label % len(_PALETTE)])
    draw.text((16, top - 2), str(label), fill=(0, 0, 0))
  return np.asarray(canvas)


def write_eval(workdir: str, step: int, results: dict) -> str:
  """<workdir>/eval/<step>.json: the step's evaluation (process 0 only); returns its path."""
  path = os.path.join(workdir, "eval", f"{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump({"step": step, **results}, f, indent=2)
  return path


FIXED_CONFIG = "fixed_config.json"


def write_fixed_config(workdir: str, values: dict, files: dict[str, tuple[str, bytes]]) -> None:
  """<workdir>/fixed_config.json: config values {dotted key: value} that every later launch on
  the workdir uses, and files {dotted key: (file name, contents)}, written beside it, whose key
  is set to the file's path (gen.data.Dataset's `fixed` and `files`). Process 0 only."""
  if jax.process_index() != 0 or not (values or files):
    return
  os.makedirs(workdir, exist_ok=True)
  for name, contents in files.values():
    with open(os.path.join(workdir, name), "wb") as f:
      f.write(contents)
  with open(os.path.join(workdir, FIXED_CONFIG), "w") as f:
    json.dump({"values": values, "files": {key: name for key, (name, _) in files.items()}}, f,
              indent=2)


def read_fixed_config(workdir: str) -> dict:
  """{dotted key: value} of <workdir>/fixed_config.json, files as their paths; {} without one."""
  path = os.path.join(workdir, FIXED_CONFIG)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    fixed = json.load(f)
  return {**fixed.get("values", {}), **{key: os.path.join(os.path.abspath(workdir), name)
                                        for key, name in fixed.get("files", {}).items()}}


def save_png(path: str, pixels: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)


def _logged_step(line: str) -> float:
  """The step of one metrics.jsonl line; a line cut short by a kill counts as after any step."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError):
    return math.inf


def _tensorboardx_summary_writer():
  """tensorboardX's SummaryWriter (event files without TensorFlow), imported without PyTorch.

  tensorboardX imports torch when it is installed, only to accept its tensors: 2.5 s of every
  run's start (python -X importtime). While tensorboardX loads, `import torch` fails as if it
  were absent; a later import (a script comparing gen with PyTorch) loads it as usual."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # Makes `import torch` raise ImportError.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Scalars to metrics.jsonl (with the wall-clock "time" of each record), TensorBoard event
  files and the log; images to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int = 0):
    """Appends to the workdir's metrics.jsonl, first dropping records after `resume_step`:
    a run killed after its last checkpoint logged steps that the resumed run logs again."""
    self._enabled = jax.process_index() == 0
    if not self._enabled:
      return
    SummaryWriter = _tensorboardx_summary_writer()
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      kept = [line for line in lines if _logged_step(line) <= resume_step]
      if len(kept) < len(lines):
        with open(path, "w") as f:
          f.writelines(kept)
    self._jsonl = open(path, "a")
    # purge_step: TensorBoard hides the earlier files' events from the resumed step on, as
    # metrics.jsonl drops them. The file name has the time in whole seconds; the suffix in
    # nanoseconds gives a launch within the same second as the last one a new file, sorted
    # after it, rather than overwriting it.
    self._tensorboard = SummaryWriter(workdir, purge_step=resume_step + 1 if resume_step else None,
                                      filename_suffix=f".{time.time_ns()}")

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    # Unix seconds, for the report's wall time: in metrics.jsonl only, not a curve to plot.
    self._jsonl.write(json.dumps({"step": step, **scalars, "time": round(time.time(), 3)}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

  def write_image(self, step: int, name: str, pixels: np.ndarray) -> None:
    if self._enabled:
      self._tensorboard.add_image(name, pixels, step, dataformats="HWC")

  def write_text(self, step: int, name: str, text: str) -> None:
    if self._enabled:
      self._tensorboard.add_text(name, text, step)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()
