"""Two processes on JAX's distributed runtime train like one process with all their devices."""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import ROOT, cli_env, kill_leftovers, load_config, override
from gen import checkpoint, experiment as experiment_lib, sharding, train

STEPS = 20
OVERRIDES = {"num_steps": STEPS, "batch_size": 16, "log_every": 10, "sample_every": 10,
             "checkpoint_every": 10, "model.generator_features": (16, 8, 8),
             "model.discriminator_features": (8, 16)}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_two_processes(args, workdir, logs, num_devices):
  """Processes 0 and 1 of one run of gen.main, over loopback, with `num_devices` CPU devices
  each; process i writes its stderr to `logs / process_<i>.log`."""
  port = free_port()
  return [
      subprocess.Popen(
          [sys.executable, "-m", "gen.main", *args, f"--workdir={workdir}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=ROOT, env=cli_env(num_devices=num_devices), stdout=subprocess.DEVNULL,
          stderr=open(logs / f"process_{i}.log", "w"), start_new_session=True)
      for i in range(2)]


def test_two_processes_match_one_process_with_all_devices(tmp_path):
  args = [f"--config.{key}={value}".replace(" ", "") for key, value in OVERRIDES.items()]
  processes = launch_two_processes(["--config=experiments/dcgan_digits.py", *args],
                                   tmp_path / "two", tmp_path, num_devices=4)
  try:
    codes = [p.wait(timeout=400) for p in processes]
  finally:  # Whatever happened, no process outlives the test.
    kill_leftovers(processes)
  logs = [(tmp_path / f"process_{i}.log").read_text()[-3000:] for i in range(2)]
  assert codes == [0, 0], logs
  # Only process 0 writes logs and samples; both took part in the checkpoints.
  assert [r.split(",")[0] for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
          ] == ['{"step": 10', '{"step": 20']
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["10", "20"]

  config = override(load_config("dcgan_digits"), OVERRIDES)
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  one = train.train(config, str(tmp_path / "one"), mesh)
  experiment = experiment_lib.build(config, mesh)
  with checkpoint.Checkpointer(str(tmp_path / "two" / "checkpoints")) as restored:
    two, _ = restored.restore(experiment.abstract_state())
  assert int(two.step) == int(one.step) == STEPS
  for a, b in zip(jax.tree.leaves(jax.device_get(two.params)),
                  jax.tree.leaves(jax.device_get(one.params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_ctrl_c_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  # SIGINT is passed on as SIGTERM to JAX's preemption notifier, so this covers both signals.
  processes = launch_two_processes(
      ["--config=experiments/gan_ring2d.py", "--config.num_steps=10000000",
       "--config.batch_size=16", "--config.log_every=100", "--config.checkpoint_every=100000",
       "--config.model.hidden=(16,16)"], tmp_path / "run", tmp_path, num_devices=2)
  metrics = tmp_path / "run" / "metrics.jsonl"
  try:
    # A logged step has all-reduced gradients over both processes: both are in the loop.
    deadline = time.monotonic() + 300
    while (time.monotonic() < deadline and all(p.poll() is None for p in processes)
           and not (metrics.exists() and metrics.read_text())):
      time.sleep(0.1)
    processes[1].send_signal(signal.SIGINT)  # Ctrl-C in the terminal of one host.
    for p in processes:
      p.wait(timeout=300)
  finally:
    kill_leftovers(processes)
  outputs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  assert [p.returncode for p in processes] == [143, 130], [o[-3000:] for o in outputs]
  assert "Stopped by a SIGTERM or SIGINT to a process of this run after step" in outputs[0]
  assert "Stopped by SIGINT after step" in outputs[1]
  steps = {o.split(" after step ")[1].split(";")[0] for o in outputs}
  assert len(steps) == 1, outputs  # Both stopped at the same step...
  assert os.listdir(tmp_path / "run" / "checkpoints") == list(steps)  # ...and saved it together.
