"""launch.sh installs only what is missing: a .venv prepared as the README's multi-process
recipe says (`pip install -e .`) runs every process of a run as it is."""
import os
import stat
import subprocess
import sys

from conftest import ROOT, cli_env, kill_leftovers
from test_multihost import free_port


def _prepared_checkout(tmp_path):
  """A checkout whose .venv/bin/python has gen and its dependencies but not the test extra
  (pytest, xdist, nbclient hidden), and fails, leaving a note, if pip is run with it."""
  checkout = tmp_path / "gen"
  (checkout / ".venv" / "bin").mkdir(parents=True)
  (checkout / "experiments").symlink_to(ROOT / "experiments")
  (checkout / "launch.sh").write_bytes((ROOT / "launch.sh").read_bytes())
  (checkout / "launch.sh").chmod(0o755)
  hidden = tmp_path / "without_test_extra"
  for package in ("pytest", "xdist", "nbclient"):
    (hidden / package).mkdir(parents=True)
    (hidden / package / "__init__.py").write_text("raise ImportError('not installed here')\n")
  python = checkout / ".venv" / "bin" / "python"
  python.write_text(
      "#!/bin/sh\n"
      f'for arg in "$@"; do [ "$arg" = pip ] && {{ echo "$*" >> {tmp_path}/pip_ran; exit 1; }}; done\n'
      f'PYTHONPATH={hidden}:{ROOT} exec {sys.executable} "$@"\n')
  python.chmod(python.stat().st_mode | stat.S_IXUSR)
  return checkout


def test_a_prepared_venv_runs_two_processes_without_installing(tmp_path):
  checkout = _prepared_checkout(tmp_path)
  port = free_port()
  env = {k: v for k, v in cli_env().items() if k != "PYTHON"}
  args = ["gan_ring2d", f"--workdir={tmp_path / 'run'}", "--config.num_steps=4",
          "--config.batch_size=16", "--config.log_every=2", "--config.model.hidden=(16,16)",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  processes = [subprocess.Popen([str(checkout / "launch.sh"), *args, f"--process_id={i}"],
                                cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[1] for p in processes]
  finally:
    kill_leftovers(processes)
  assert [p.returncode for p in processes] == [0, 0], [o[-2000:] for o in outputs]
  assert not any("Installing" in o for o in outputs)
  assert not os.path.exists(tmp_path / "pip_ran")
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_the_install_check_runs_once_until_pyproject_or_constraints_change(tmp_path):
  checkout = _prepared_checkout(tmp_path)
  (checkout / "pyproject.toml").write_text("[project]\n")
  (checkout / "constraints.txt").write_text("jax==0.10.2\n")
  python = checkout / ".venv" / "bin" / "python"
  # Every call logged; the run itself (gen.main) stubbed out: only the check is of interest.
  python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n'
                    f'[ "$2" = gen.main ] && exit 0\n' + python.read_text().split("\n", 1)[1])
  env = {k: v for k, v in cli_env().items() if k != "PYTHON"}

  def checks_after_a_launch():
    result = subprocess.run([str(checkout / "launch.sh"), "gan_ring2d"], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = (tmp_path / "calls").read_text().splitlines()
    return sum(call.startswith("-c import gen.main") for call in calls)

  assert checks_after_a_launch() == 1
  assert checks_after_a_launch() == 1  # Skipped: nothing it was installed from changed.
  (checkout / "constraints.txt").write_text("jax==0.10.3\n")
  assert checks_after_a_launch() == 2
  assert not (tmp_path / "pip_ran").exists()
