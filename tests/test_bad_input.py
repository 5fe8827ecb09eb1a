"""Bad input fails fast, before compiling, with one line that names the problem and the fix,
and leaves what the workdir already holds untouched."""
import hashlib
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env
from test_cli import config_args, run


def contents(directory) -> dict:
  """{relative path: content hash} of every file under `directory`."""
  return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
          for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir holding a finished 6-step gan_ring2d run."""
  workdir = tmp_path_factory.mktemp("trained")
  result = run([*config_args("gan_ring2d"), f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def offline_env(num_devices=1):
  # A proxy that refuses connections: the machine is offline, whatever the real network.
  return {**cli_env(num_devices), "HTTPS_PROXY": "http://127.0.0.1:9",
          "HTTP_PROXY": "http://127.0.0.1:9"}


CASES = {
    "unknown config key": (["--config.batch_sze=32"], 1,
                           ["unknown config key in the overrides: 'batch_sze' Did you mean "
                            "\"batch_size\" instead of \"batch_sze\"? The keys are those of"]),
    "unknown nested config key": (["--config.model.hiden=(8,)"], 1,
                                  ["unknown config key in the overrides: 'hiden' Did you mean "
                                   "\"hidden\""]),
    "wrong value type": (["--config.batch_size=many"], 1, ["batch_size", "many"]),
    "value out of range": (["--config.model.latent_dim=0"], 1,
                           ["config.model.latent_dim=0 must be an integer of at least 1"]),
    "sampling temperature not positive": (["--config.gan.temperature=0"], 1,
                                          ["config.gan.temperature=0.0 must be in (0.0, inf]"]),
    "negative learning rate": (["--config.optimizer.generator.learning_rate=-1"], 1,
                               ["config.optimizer.generator.learning_rate=-1.0 must be positive"]),
    "batch not divisible by the devices": (["--config.batch_size=12"], 8,
                                           ["batch_size=12", "8 devices", "--config.batch_size=8"]),
    "checkpoint of a different model": (["--config.model.latent_dim=3"], 1,
                                        ["different model",
                                         "modules.generator.params.Dense_0.kernel",
                                         "shape (2, 16) there and (3, 16)", "new --workdir"]),
    "sampling a different model": (["--config.model.latent_dim=3", "--mode=sample"], 1,
                                   ["different model",
                                    "modules.generator.params.Dense_0.kernel"]),
    "sampling with a different optimizer": (["--config.optimizer.schedule=linear",
                                             "--mode=sample"], 1,
                                            ["different model", "opt_state.1.count is missing"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_leaves_the_workdir_untouched(case, trained):
  extra, num_devices, fragments = CASES[case]
  before = contents(trained)
  result = run([*config_args("gan_ring2d"), f"--workdir={trained}", *extra],
               num_devices=num_devices)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "error: " in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, (fragment, result.stderr[-3000:])
  assert contents(trained) == before


def test_dataset_not_prepared_and_no_network(tmp_path, trained):
  before = contents(trained)
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "gen.main", "--config=experiments/dcgan_mnist.py",
       f"--config.dataset.data_dir={data_dir}", f"--workdir={trained}"],
      cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  for fragment in ["'mnist'", "not prepared", "network is unreachable", "tfds build mnist",
                   "--config.dataset.data_dir"]:
    assert fragment in result.stderr, (fragment, result.stderr[-3000:])
  assert contents(trained) == before


def test_workdir_not_writable(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = run([*config_args("gan_ring2d"), f"--workdir={blocker}/run"])
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert f"--workdir={blocker}/run cannot be written" in result.stderr
  assert "choose a directory you can write to" in result.stderr
  assert blocker.read_text() == "not a directory"


def test_sample_without_checkpoint(tmp_path):
  result = run([*config_args("gan_ring2d"), f"--workdir={tmp_path}", "--mode=sample"])
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "No checkpoint" in result.stderr and "--mode=train with the same --workdir" in result.stderr
  assert not any(tmp_path.iterdir())


def test_unknown_experiment():
  result = subprocess.run([str(ROOT / "launch.sh"), "dcgan_digitz"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**cli_env(), "PYTHON": sys.executable})
  assert result.returncode == 2
  assert "unknown experiment 'dcgan_digitz'" in result.stderr
  assert "dcgan_digits" in result.stderr and "vae_digits" in result.stderr


def test_a_config_without_a_required_key_names_it(single_device_mesh):
  import ml_collections
  from gen import UsageError, cli
  from gen.experiment import build
  config = ml_collections.ConfigDict(
      {k: v for k, v in cli.load_config("gan_ring2d").items() if k != "max_nonfinite_steps"})
  with pytest.raises(UsageError, match=r"lacks the required keys \['max_nonfinite_steps'\]"):
    build(config, single_device_mesh)
