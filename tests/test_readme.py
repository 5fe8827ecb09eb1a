"""Every command in the README works as written, so the README cannot rot.

Each `./launch.sh` command (also inside the srun and gcloud lines) is parsed by the program
it starts and its experiment is built, with tfds's mock data where the data would be
downloaded; the quick start's train, sample, eval and report commands are run for real
through launch.sh. `./launch.sh test` is what `.ci/run` runs.
"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cli_env

README = (ROOT / "README.md").read_text()
PLACEHOLDER = "dcgan_digits"  # Stands for <experiment>.


def readme_commands() -> list[str]:
  """The commands of the README's bash blocks (continuations joined, comments dropped) and
  its inline `./launch.sh ...` and `python ...` code."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = re.sub(r"\s+#.*$", "", line).strip()
      if line and not line.startswith("#"):
        commands.append(" ".join(line.split()))
  inline = re.findall(r"`((?:\./launch\.sh|python)\s[^`]+)`", README)
  commands += [" ".join(c.split()) for c in inline]
  return sorted(set(commands))


def launch_commands() -> list[str]:
  """Every `./launch.sh ...` inside the README's commands, placeholders filled in and
  optional [...] parts left out."""
  found = set()
  for command in readme_commands():
    for match in re.findall(r"\./launch\.sh [^\"&;]+", command):
      match = re.sub(r"\[[^\]]*\]", "", match)
      match = match.replace("<experiment>", PLACEHOLDER).replace("<name>", PLACEHOLDER)
      found.add(" ".join(match.split()))
  return sorted(found)


def test_the_readme_has_its_commands():
  launches = launch_commands()
  assert "./launch.sh dcgan_digits" in launches and "./launch.sh test" in launches
  assert any(c.startswith("srun ") for c in readme_commands())
  assert any("--coordinator_address" in c for c in launches)
  assert len(launches) >= 12


def test_the_experiments_table_lists_every_experiment_once():
  rows = re.findall(r"^\| `\./launch\.sh (\w+)` \|", README, re.M)
  experiments = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
  assert sorted(rows) == experiments


def test_the_readme_opens_with_the_two_commands():
  first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
  assert [line.split("#")[0].strip() for line in first_block] == [
      "./launch.sh dcgan_digits", "./launch.sh test"]
  assert README.index("```bash") < README.index("\n## ")


def test_ci_runs_the_readmes_test_command():
  assert "./launch.sh test" in (ROOT / ".ci" / "run").read_text()


def test_every_python_command_names_a_file_or_module_that_exists():
  for command in readme_commands():
    for target in re.findall(r"python (?:-m )?(\S+)", command):
      if target.endswith(".py"):
        assert (ROOT / target).is_file(), command
      else:
        assert (ROOT / (target.replace(".", "/") + ".py")).is_file(), command
    if "[bench]" in command:
      assert "bench = [" in (ROOT / "pyproject.toml").read_text()


# Parses each command's flags as its program does (exit status 2 and one line on a bad flag,
# key or value), then builds its experiment: the devices, data and config checks, no compile.
# One process per program imports gen once and forks a child per command (a fresh flag
# state each, and no seconds of imports); the parent starts no JAX backend before forking.
CHECK = """
import json, os, sys, tempfile
from absl import flags
program, commands = sys.argv[1], json.loads(sys.argv[2])
__import__("gen.bench" if program == "bench" else "gen.main")
from gen import cli, experiment as experiment_lib

def check(args):
  if program == "bench":
    argv = cli.experiment_as_config(["bench", *args])
  else:
    argv = ["main", f"--config=experiments/{args[0]}.py", *args[1:]]
  sys.argv = argv  # ml_collections finds the --config.<key> overrides there.
  cli.parse_flags(argv)
  from gen import UsageError, bench
  config = cli.CONFIG.value
  try:
    with bench.dataset_or_mock(config):
      experiment = experiment_lib.build(config)
      if program == "main" and flags.FLAGS.labels:
        experiment.sample_labels(flags.FLAGS.num_samples, [int(x) for x in flags.FLAGS.labels])
  except UsageError as e:
    cli.fail(str(e))
  return "built " + config.model.name

for args in commands:
  log = tempfile.TemporaryFile("w+")
  sys.stdout.flush(); sys.stderr.flush()
  child = os.fork()
  if child == 0:
    os.dup2(log.fileno(), 2)
    try:
      outcome, code = check(args), 0
    except SystemExit as e:
      outcome, code = "failed", e.code if isinstance(e.code, int) else 1
    print(json.dumps([args, outcome]), flush=True)
    sys.stderr.flush()
    os._exit(code)
  _, status = os.waitpid(child, 0)
  log.seek(0)
  print(json.dumps([args, os.waitstatus_to_exitcode(status), log.read()[-3000:]]), flush=True)
"""


def test_every_experiment_the_readme_runs_exists():
  # Those run without arguments are each built and trained by tests/test_experiments.py.
  for command in launch_commands():
    args = command.split()[1:]
    if args[0] not in ("test", "results", "lock"):
      name = args[1] if args[0] == "bench" else args[0]
      assert (ROOT / "experiments" / f"{name}.py").is_file(), command


WITH_ARGUMENTS = [c for c in launch_commands()
                  if not c.startswith(("./launch.sh test", "./launch.sh results",
                                       "./launch.sh lock"))
                  and len(c.split()) > 2]


@pytest.mark.parametrize("command", [c for c in readme_commands()
                                     if c.startswith("python -m gen.results")])
def test_readme_results_command_parses(command):
  args = [a for a in command.split()[3:] if a != "..."]
  parse = ("import sys; from absl import flags; from gen import results; results.define_flags(); "
           "flags.FLAGS(sys.argv)")
  result = subprocess.run([sys.executable, "-c", parse, *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, (command, result.stderr[-2000:])


def _program_and_args(command: str) -> tuple[str, list[str]]:
  args = command.split()[1:]
  return ("bench", args[1:]) if args[0] == "bench" else ("main", args)


@pytest.fixture(scope="module")
def built() -> dict:
  """{command: [its outcome ("built <model>"), exit status, stderr]}."""
  env = {**cli_env(), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
  outcomes = {}
  for program in ("main", "bench"):
    commands = {c: _program_and_args(c)[1] for c in WITH_ARGUMENTS
                if _program_and_args(c)[0] == program}
    result = subprocess.run([sys.executable, "-c", CHECK, program,
                             json.dumps(list(commands.values()))], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    done = {}
    for line in result.stdout.splitlines():
      args, *rest = json.loads(line)
      done.setdefault(tuple(args), []).extend(rest)  # The child's outcome, then its exit.
    for command, args in commands.items():
      outcomes[command] = done.get(tuple(args), [f"not reached: {result.stderr[-3000:]}"])
  return outcomes


@pytest.mark.parametrize("command", WITH_ARGUMENTS)
def test_readme_command_parses_and_builds(command, built):
  program, args = _program_and_args(command)
  assert (ROOT / "experiments" / f"{args[0]}.py").is_file(), command
  outcome = built[command]
  assert outcome[0].startswith("built") and outcome[1] == 0, (command, *outcome)


def test_quick_start_train_sample_eval_report_through_launch_sh(tmp_path):
  """The README's first command and its per-run modes, as written plus a short run."""
  workdir = tmp_path / "run"
  short = ["--config.num_steps=40", "--config.log_every=10", "--config.sample_every=20",
           "--config.checkpoint_every=20", "--config.eval_every=40",
           "--config.eval.num_samples=200", f"--workdir={workdir}"]
  env = {**cli_env(), "PYTHON": sys.executable}

  def launch(*args):
    result = subprocess.run([str(ROOT / "launch.sh"), *args, *short], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (args, result.stderr[-3000:])
    return result

  launch("dcgan_digits")
  assert (workdir / "summary.md").is_file() and (workdir / "eval" / "40.json").is_file()
  output = tmp_path / "samples.npz"
  launch("dcgan_digits", "--mode=sample", "--num_samples=1000", "--output=samples.npz",
         f"--output={output}")  # The README's relative path, redirected out of the checkout.
  with np.load(output) as saved:
    assert saved["samples"].shape == (1000, 8, 8, 1)
  evaluated = json.loads(launch("dcgan_digits", "--mode=eval").stdout)
  assert {"fd", "precision", "recall"} <= set(evaluated)
  (workdir / "summary.md").unlink()
  launch("dcgan_digits", "--mode=report")
  assert (workdir / "summary.md").is_file()


def test_the_readme_shows_committed_small_images():
  images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
  assert images, "the README shows a sample grid"
  for image in images:
    path = ROOT / image
    assert path.is_file() and path.stat().st_size < 200_000, image
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
