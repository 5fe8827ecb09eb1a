"""Faults a long run meets: signals, kill -9, damaged checkpoints and non-finite steps."""
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, cli_env, kill_leftovers, load_config, override, tiny
from gen import UsageError, checkpoint, data, experiment as experiment_lib, sharding, train

# gan_grid2d with a linear learning-rate decay and its generator EMA: a resume must restore the
# schedule's count, the EMA weights, the RNG and the data position to match bitwise.
GRID_ARGS = ["--config=experiments/gan_grid2d.py", "--config.optimizer.schedule=linear",
             "--config.batch_size=16",
             "--config.log_every=50", "--config.checkpoint_every=50",
             "--config.sample_every=100000", "--config.eval_every=100000",
             "--config.model.hidden=(16,16)"]


def launch(workdir, num_steps, optimized=False, args=(), **kwargs):
  return subprocess.Popen(
      [sys.executable, "-m", "gen.main", *GRID_ARGS, f"--config.num_steps={num_steps}",
       f"--workdir={workdir}", *args], cwd=ROOT, env=cli_env(optimized=optimized),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
      **kwargs)


def finish(process, timeout=300):
  try:
    _, stderr = process.communicate(timeout=timeout)
  finally:
    kill_leftovers([process])
  return process.returncode, stderr


def wait_for_checkpoint(workdir, process, timeout=120):
  """Returns once `workdir` holds a finished checkpoint (while `process` still runs)."""
  deadline = time.monotonic() + timeout
  checkpoints = workdir / "checkpoints"
  while time.monotonic() < deadline and process.poll() is None:
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
      return
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint appeared; exit code {process.poll()}")


def final_state(workdir, config_name="gan_grid2d", **overrides):
  if config_name == "gan_grid2d":
    overrides = {"optimizer.schedule": "linear", **overrides}
  experiment = experiment_lib.build(tiny(load_config(config_name), **overrides),
                           sharding.make_mesh(jax.devices()[:1]))
  with checkpoint.Checkpointer(str(workdir / "checkpoints")) as checkpointer:
    state, data_state = checkpointer.restore(experiment.abstract_state())
  return jax.device_get(state), data_state


def assert_states_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(x, y)


def logged_steps(workdir):
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def wait_for_a_logged_step(workdir, process, timeout=120):
  """Returns once `workdir`'s metrics.jsonl has a line (while `process` still runs)."""
  deadline = time.monotonic() + timeout
  metrics = workdir / "metrics.jsonl"
  while time.monotonic() < deadline and process.poll() is None:
    if metrics.exists() and metrics.read_text():
      return
    time.sleep(0.05)
  raise AssertionError(f"no step was logged; exit code {process.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_run_resumes(sig, tmp_path):
  # No scheduled checkpoint in this run: the one it stops with is the signal's own.
  process = launch(tmp_path, num_steps=10**7, args=["--config.checkpoint_every=1000000000"])
  wait_for_a_logged_step(tmp_path, process)
  process.send_signal(sig)
  code, stderr = finish(process)
  assert code == 128 + sig, stderr[-3000:]
  assert f"Stopped by {signal.Signals(sig).name} after step" in stderr and "Traceback" not in stderr
  stopped_at = int(stderr.split("after step ")[1].split(";")[0])
  assert f"checkpoints/{stopped_at} holds it" in stderr
  state, _ = final_state(tmp_path)
  assert int(state.step) == stopped_at and stopped_at >= 50  # After the first logged step.
  assert os.listdir(tmp_path / "checkpoints") == [str(stopped_at)]

  code, stderr = finish(launch(tmp_path, num_steps=stopped_at + 7))
  assert code == 0, stderr[-3000:]
  assert f"Resumed from {tmp_path} at step {stopped_at}" in stderr
  assert int(final_state(tmp_path)[0].step) == stopped_at + 7


def test_a_signal_while_the_step_compiles_stops_after_the_first_step(tmp_path, monkeypatch,
                                                                     single_device_mesh):
  compile_train_step = experiment_lib.Experiment.compile_train_step

  def interrupted_compile(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before any step has run.
    return compile_train_step(self, *args, **kwargs)

  def uncaught(signum, frame):  # Fails the test, where KeyboardInterrupt would end the session.
    raise AssertionError("train() did not catch the SIGINT")

  monkeypatch.setattr(experiment_lib.Experiment, "compile_train_step", interrupted_compile)
  previous = signal.signal(signal.SIGINT, uncaught)
  try:
    with pytest.raises(train.Stopped, match="Stopped by SIGINT after step 1;") as stopped:
      train.train(tiny(load_config("gan_ring2d"), num_steps=100), str(tmp_path),
                  single_device_mesh)
    assert signal.getsignal(signal.SIGINT) is uncaught  # Restored when train() returns.
  finally:
    signal.signal(signal.SIGINT, previous)
  assert stopped.value.exit_code == 130
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_a_second_signal_exits_at_once(monkeypatch):
  exits = []
  monkeypatch.setattr(os, "_exit", exits.append)
  with train._StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.stop_requested(1) and not exits
    os.kill(os.getpid(), signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Restored on leaving the loop.


def test_kill_9_at_a_random_moment_resumes_bitwise(tmp_path):
  seed = random.randrange(10**6)
  delay = random.Random(seed).uniform(0.0, 1.5)
  num_steps = 2400  # About 8 s of steps here: the kill lands mid-run on a faster machine too.
  process = launch(tmp_path / "killed", num_steps, optimized=True)
  wait_for_checkpoint(tmp_path / "killed", process)
  time.sleep(delay)
  process.kill()
  code, _ = finish(process)
  assert code == -signal.SIGKILL, f"the run ended before the kill (seed {seed})"
  code, stderr = finish(launch(tmp_path / "killed", num_steps, optimized=True))
  assert code == 0, stderr[-3000:]
  code, stderr = finish(launch(tmp_path / "straight", num_steps, optimized=True))
  assert code == 0, stderr[-3000:]

  resumed, resumed_data = final_state(tmp_path / "killed")
  straight, straight_data = final_state(tmp_path / "straight")
  assert int(resumed.step) == num_steps, f"seed {seed}"
  assert_states_equal(resumed, straight)  # Params, Adam moments and count, EMA, RNG.
  assert resumed_data == straight_data
  assert logged_steps(tmp_path / "killed") == list(range(50, num_steps + 1, 50)), f"seed {seed}"


def truncate_checkpoint(path):
  for root, _, files in os.walk(path):
    for name in files:
      file = os.path.join(root, name)
      with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, single_device_mesh,
                                                                    caplog):
  config = lambda steps: tiny(load_config("gan_ring2d"), num_steps=steps, checkpoint_every=2,
                              keep_checkpoints=2)
  train.train(config(4), str(tmp_path / "damaged"), single_device_mesh)
  truncate_checkpoint(tmp_path / "damaged" / "checkpoints" / "4")

  resumed = train.train(config(8), str(tmp_path / "damaged"), single_device_mesh)
  assert "cannot be read" in caplog.text and "trying the previous one" in caplog.text
  straight = train.train(config(8), str(tmp_path / "straight"), single_device_mesh)
  assert_states_equal(jax.device_get(resumed), jax.device_get(straight))
  # The damaged step is kept aside, not counted among the two kept, and not deleted.
  assert sorted(os.listdir(tmp_path / "damaged" / "checkpoints")) == ["6", "8"]
  assert os.listdir(tmp_path / "damaged" / "checkpoints_unreadable") == ["4"]


def _restored_by_orbax_alone(checkpoints, step, abstract_state):
  """The state Orbax itself restores from `checkpoints/<step>` (no digest check), or None when
  it fails to read it."""
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(str(checkpoints),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  try:
    return jax.device_get(manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state))).state)
  except Exception:
    return None
  finally:
    manager.close()


def overwrite_array_data(checkpoints, step, abstract_state):
  """Overwrites 4 KB inside one array data file of a checkpoint step (its JSON and metadata
  intact), chosen so that Orbax alone restores the step without a word but with other values:
  what a bad disk does. Returns the file."""
  path = checkpoints / str(step)
  good = _restored_by_orbax_alone(checkpoints, step, abstract_state)
  files = sorted((f for f in (path / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
                 key=lambda f: -f.stat().st_size)
  noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
  # Where a chunk is stored compressed, an overwrite there fails to decode (which is caught
  # anyway); which parts of the files hold raw data depends on the values, so several places
  # are tried.
  for file, fraction in itertools.product(files, (0.1, 0.3, 0.5, 0.7, 0.9)):
    original = file.read_bytes()
    offset = int(len(original) * fraction)
    size = min(4096, len(original) - offset)
    file.write_bytes(original[:offset] + noise[:size] + original[offset + size:])
    bad = _restored_by_orbax_alone(checkpoints, step, abstract_state)
    if bad is not None and any(not np.array_equal(a, b) for a, b in zip(
        _leaves(good), _leaves(bad))):
      return file
    file.write_bytes(original)
  raise AssertionError("no overwrite of the array data restored silently: nothing to test")


def _leaves(state):
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(state)]


def test_corrupted_array_data_is_caught_and_the_previous_checkpoint_restored(
    tmp_path, single_device_mesh, caplog):
  # dcgan_digits's own model: its arrays are large enough for Orbax's chunks to hold raw data.
  # Its constant learning rate: a linear decay's length, num_steps, changes from 4 to 6 here.
  config = lambda steps: override(load_config("dcgan_digits"), {
      "num_steps": steps, "checkpoint_every": 2, "keep_checkpoints": 2, "log_every": 1,
      "sample_every": 1000, "eval_every": 1000, "optimizer.schedule": "constant"})
  train.train(config(4), str(tmp_path / "damaged"), single_device_mesh)
  experiment = experiment_lib.build(config(4), single_device_mesh)
  overwrite_array_data(tmp_path / "damaged" / "checkpoints", 4, experiment.abstract_state())

  resumed = train.train(config(6), str(tmp_path / "damaged"), single_device_mesh)
  assert "differ from what was saved" in caplog.text and "trying the previous one" in caplog.text
  straight = train.train(config(6), str(tmp_path / "straight"), single_device_mesh)
  assert_states_equal(jax.device_get(resumed), jax.device_get(straight))
  assert os.listdir(tmp_path / "damaged" / "checkpoints_unreadable") == ["4"]


def test_a_checkpoint_with_more_optimizer_state_is_a_different_config_not_damage(
    tmp_path, single_device_mesh):
  # The same shapes everywhere, and one more leaf in the checkpoint (the schedule's count):
  # Orbax's restore fails on it as on damaged files, and it used to be set aside.
  config = lambda schedule: override(tiny(load_config("gan_ring2d")), {
      "num_steps": 2, "checkpoint_every": 2, "optimizer.schedule": schedule})
  train.train(config("linear"), str(tmp_path), single_device_mesh)
  experiment = experiment_lib.build(config("constant"), single_device_mesh)
  with checkpoint.Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
    with pytest.raises(UsageError, match=r"different model or optimizer: "
                                         r"modules\.discriminator\.opt_state\.1\.count is there"):
      checkpointer.restore(experiment.abstract_state())
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  assert not (tmp_path / "checkpoints_unreadable").exists()


def test_restored_digests_and_finiteness_are_checked(tmp_path, single_device_mesh):
  from gen.checkpoint import Unreadable, _check_restored, digests
  state = jax.device_get(experiment_lib.build(tiny(load_config("gan_ring2d")),
                                              single_device_mesh).init_state())
  _check_restored(state, digests(state), "a fresh state")  # Passes.

  def with_kernel(kernel):
    generator = state.modules["generator"]
    params = {**generator.params, "Dense_0": {**generator.params["Dense_0"], "kernel": kernel}}
    return state.replace(modules={**state.modules, "generator": generator.replace(params=params)})

  kernel = np.array(state.modules["generator"].params["Dense_0"]["kernel"])
  changed = kernel.copy()
  changed[0, 0] = np.nextafter(changed[0, 0], np.inf)  # One bit.
  with pytest.raises(Unreadable, match=r"1 arrays .* differ .*generator.params.Dense_0.kernel"):
    _check_restored(with_kernel(changed), digests(state), "step 4")
  changed[0, 0] = np.nan  # Caught without digests too (a step from before they were kept).
  with pytest.raises(Unreadable, match="generator.params.Dense_0.kernel of step 4 holds non-finite"):
    _check_restored(with_kernel(changed), None, "step 4")


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 6 MB tmpfs (needs root, as CI and these sessions run; skipped otherwise)."""
  mount = tmp_path / "tinyfs"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_the_checkpoint_and_the_last_complete_one(tiny_filesystem):
  workdir = tiny_filesystem / "run"
  # The model of the size whose checkpoints (about 2.5 MB) fill the 6 MB at the third.
  args = ["--config=experiments/dcgan_digits.py", "--config.checkpoint_every=2",
          "--config.log_every=2", "--config.sample_every=1000000", "--config.eval_every=1000000",
          "--config.model.generator_features=(128,64,32)",
          "--config.model.discriminator_features=(32,64)", "--config.model.q_hidden=8",
          "--config.gan.ema_decay=0",
          f"--workdir={workdir}"]
  run = lambda steps: subprocess.run(
      [sys.executable, "-m", "gen.main", *args, f"--config.num_steps={steps}"], cwd=ROOT,
      env=cli_env(), capture_output=True, text=True, timeout=300)
  result = run(8)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: Could not write the checkpoint of step 6"), message
  assert f"no space left on the filesystem of {workdir}/checkpoints" in message
  assert f"last complete checkpoint is {workdir}/checkpoints/4 (step 4)" in message
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  # Nothing is lost: with room, the same command resumes from step 4.
  subprocess.run(["mount", "-o", "remount,size=40m", str(tiny_filesystem)], check=True)
  result = run(8)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from {workdir} at step 4" in result.stderr


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, single_device_mesh):
  config = tiny(load_config("gan_ring2d"), num_steps=2, checkpoint_every=2)
  train.train(config, str(tmp_path), single_device_mesh)
  truncate_checkpoint(tmp_path / "checkpoints" / "2")
  with pytest.raises(UsageError, match=r"(?s)No readable checkpoint.*step 2.*new --workdir"):
    train.train(config, str(tmp_path), single_device_mesh)
  assert os.listdir(tmp_path / "checkpoints_unreadable") == ["2"]


def test_unfinished_saves_are_gone_when_the_checkpointer_closes(tmp_path):
  # What saves cut off by kill -9 leave behind. Orbax removes them in a background thread;
  # a process that exits without saving (sample, eval, an early error) must still wait for
  # it, or the thread dies in interpreter shutdown with a traceback.
  for step in range(200):
    (tmp_path / f"{step}.orbax-checkpoint-tmp-1700000000" / "state").mkdir(parents=True)
  with checkpoint.Checkpointer(str(tmp_path)):
    pass
  assert os.listdir(tmp_path) == []


def poisoned(dataset, bad):
  """`dataset` with NaN examples at the indices where `bad(indices)` is true."""
  def read(idx):
    batch = dataset.read(idx)
    rows = bad(np.asarray(idx)).reshape(-1, *[1] * (batch["x"].ndim - 1))
    batch["x"] = np.where(rows, np.nan, batch["x"])
    return batch
  return dataclasses.replace(dataset, read=read)


def test_a_non_finite_step_keeps_the_state_and_advances_the_step(single_device_mesh):
  experiment = experiment_lib.build(tiny(load_config("dcgan_digits")), single_device_mesh)
  before = jax.device_get(experiment.init_state())
  # Copies: the step donates its input state, and device_get leaves the key on the device.
  fresh = lambda: jax.device_put(jax.tree.map(lambda x: x.copy(), before),
                                 sharding.replicated(single_device_mesh))
  step = experiment.compile_train_step(fresh())
  batch = experiment.read_batch(np.arange(experiment.step_batch_size))
  batch["x"][3] = np.nan
  after, metrics = step(fresh(), sharding.shard_batch(batch, single_device_mesh))
  assert float(metrics["update_skipped"]) == 1.0 and not np.isfinite(float(metrics["d_loss"]))
  assert int(after.step) == int(before.step) + 1
  assert_states_equal(jax.device_get(after.replace(step=before.step)), before)

  batch["x"][3] = 0.0
  after, metrics = step(fresh(), sharding.shard_batch(batch, single_device_mesh))
  assert float(metrics["update_skipped"]) == 0.0
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         jax.device_get(after.params), before.params))
  assert all(changed)


def test_sporadic_non_finite_batches_are_skipped_and_counted(tmp_path, single_device_mesh,
                                                             monkeypatch):
  bad = lambda idx: idx % 41 == 0  # About a third of the batches of 16 hold a NaN point.
  load = data.load
  monkeypatch.setattr(data, "load", lambda *a, **k: poisoned(load(*a, **k), bad))
  config = tiny(load_config("gan_ring2d"), num_steps=30, log_every=30, max_nonfinite_steps=30)
  state = train.train(config, str(tmp_path), single_device_mesh)

  # Which steps had a NaN point: the same batches' indices, drawn apart from the loop.
  indices = iter(data.batch_dataset(dataclasses.replace(
      data.mixture("ring2d", "train"), read=lambda idx: {"idx": idx}), 16, config.seed))
  expected = sum(bool(bad(next(indices)["idx"]).any()) for _ in range(30))
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert 0 < expected < 30 and record["skipped_steps"] == expected
  assert int(state.step) == 30
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_non_finite_steps_in_a_row_stop_the_run_naming_the_last_good_checkpoint(
    tmp_path, single_device_mesh, monkeypatch):
  config = lambda steps: tiny(load_config("gan_ring2d"), num_steps=steps, checkpoint_every=4,
                              max_nonfinite_steps=3)
  good = train.train(config(4), str(tmp_path), single_device_mesh)

  load = data.load
  monkeypatch.setattr(data, "load", lambda *a, **k: poisoned(load(*a, **k), lambda i: i >= 0))
  with pytest.raises(train.Stopped) as stopped:
    train.train(config(20), str(tmp_path), single_device_mesh)
  message = str(stopped.value)
  assert stopped.value.exit_code == 1
  assert "Stopped at step 7: 3 steps in a row (from step 5)" in message
  assert "max_nonfinite_steps=3" in message and "checkpoints/4 (step 4)" in message
  assert os.listdir(tmp_path / "checkpoints") == ["4"]  # Nothing written from the bad steps.
  assert_states_equal(final_state(tmp_path, "gan_ring2d")[0], jax.device_get(good))
