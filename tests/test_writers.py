"""What a resumed run's logs show: each step once, from the run that kept it."""
import glob
import json
import subprocess
import sys
import struct

from tensorboardX.proto import event_pb2

from conftest import ROOT, cli_env
from gen import writers


def tensorboard_scalars(workdir, tag):
  """{step: value} of `tag` as TensorBoard shows it: event files in the order they were
  written, where a session start at step s hides the earlier events at steps >= s."""
  shown = {}
  for path in sorted(glob.glob(f"{workdir}/events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecords: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        shown = {step: value for step, value in shown.items() if step < event.step}
      for value in event.summary.value:
        if value.tag == tag:
          shown[event.step] = value.simple_value
  return shown


def log_steps(workdir, steps, value, resume_step=0):
  writer = writers.MetricWriter(str(workdir), resume_step=resume_step)
  for step in steps:
    writer.write_scalars(step, {"loss": value})
  writer.close()


def test_a_resumed_run_replaces_the_steps_logged_after_its_checkpoint(tmp_path):
  log_steps(tmp_path, range(1, 11), 1.0)  # Killed after step 10, last checkpoint at step 6.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "lo')  # The kill cut this record short.
  log_steps(tmp_path, range(7, 13), 2.0, resume_step=6)

  expected = {step: 1.0 if step <= 6 else 2.0 for step in range(1, 13)}
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["step"]: r["loss"] for r in records} == expected
  assert len(records) == len(expected)
  assert tensorboard_scalars(tmp_path, "loss") == expected


def test_a_fresh_run_purges_nothing(tmp_path):
  log_steps(tmp_path, range(1, 4), 1.0)
  assert tensorboard_scalars(tmp_path, "loss") == {1: 1.0, 2: 1.0, 3: 1.0}


def test_the_writer_does_not_import_pytorch_and_leaves_it_importable(tmp_path):
  # In a fresh process: this one may have imported torch already (the comparison tests).
  script = f"""
import importlib.util, sys
from gen import writers
writer = writers.MetricWriter({str(tmp_path)!r})
writer.write_scalars(1, {{"loss": 0.5}})
assert "torch" not in sys.modules
if importlib.util.find_spec("torch") is not None:  # Installed: a later import still works.
  import torch
  assert float(torch.ones(2).sum()) == 2.0
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert tensorboard_scalars(tmp_path, "loss") == {1: 0.5}
