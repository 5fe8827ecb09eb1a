#!/usr/bin/env bash
# gen's one entry point.
#   ./launch.sh <experiment> [--workdir=DIR] [--mode=train|sample|eval|report] [--config.KEY=VALUE ...]
#   ./launch.sh test [pytest args]
#   ./launch.sh bench <experiment> [--batch_size=B] [--steps=N] [--json]
#   ./launch.sh results [--experiments=A,B] [--seeds=N]   (the README's results, regenerated)
#   ./launch.sh lock      (rewrites constraints.txt from .venv, after upgrading on purpose)
# Several processes (README, "Running at scale"): the same command in each; JAX finds its peers
# under SLURM (`srun ./launch.sh <experiment> ...`) and on Cloud TPU VMs (`--worker=all`), or
# add --coordinator_address=HOST:PORT --num_processes=N --process_id=I by hand.
# Uses the Python that can already import gen (e.g. Colab, an activated env); otherwise
# creates .venv beside this script on first use and installs gen into it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

experiments() { ls experiments | sed -n 's/^\([a-z0-9][a-z0-9_]*\)\.py$/  \1/p'; }

usage() {
  echo "usage: ./launch.sh <experiment> [--workdir=DIR] [--mode=train|sample|eval|report] [--config.KEY=VALUE ...]"
  echo "       ./launch.sh test [pytest args]"
  echo "       ./launch.sh bench <experiment> [--batch_size=B] [--steps=N] [--json]"
  echo "       ./launch.sh results [--experiments=A,B] [--seeds=N]"
  echo "       ./launch.sh lock"
  echo "experiments:"
  experiments
}

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 2
fi
target="$1"
shift
if [[ "$target" != "test" && "$target" != "bench" && "$target" != "results" &&
      "$target" != "lock" && ! -f "experiments/$target.py" ]]; then
  echo "error: unknown experiment '$target'. Available experiments:" >&2
  experiments >&2
  exit 2
fi

# What this target imports, and what installs it: the tests need the test extra too; an
# experiment only gen (so a .venv prepared with `pip install -e .` is used as it is).
if [[ "$target" == "test" || "$target" == "lock" ]]; then
  needs="import gen.main, pytest, xdist, nbclient"
  package=".[test]"
  ready=.venv/.ready-test
else
  needs="import gen.main"
  package="."
  ready=.venv/.ready-run
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
  elif command -v python3 >/dev/null && python3 -c "$needs" 2>/dev/null; then
    python=python3
  else
    python=.venv/bin/python
  fi
fi
# A .venv that passed the check records it in $ready, with a checksum of what it was installed
# from; while pyproject.toml and constraints.txt are unchanged, later commands skip the check,
# which imports gen and JAX (2 s of every command's start).
wanted=$( (cat pyproject.toml constraints.txt 2>/dev/null || true) | cksum)
if [[ "$python" == .venv/bin/python && -f "$ready" && "$(cat "$ready")" == "$wanted" ]]; then
  :
elif ! "$python" -c "$needs" 2>/dev/null; then
  echo "Installing gen and its dependencies into .venv (first use only)..." >&2
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  python=.venv/bin/python
  "$python" -m pip install --quiet --upgrade pip
  # The versions the test suite passed with (constraints.txt), on the Python they were
  # locked on; another Python gets the newest versions pyproject.toml allows, with a warning.
  locked=$(sed -n 's/^# python \([0-9.]*\)$/\1/p' constraints.txt)
  running=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [[ "$locked" == "$running" ]]; then
    "$python" -m pip install --quiet -e "$package" -c constraints.txt
  else
    echo "warning: constraints.txt was locked on Python $locked, this is $running: installing" \
         "the newest versions pyproject.toml allows." >&2
    "$python" -m pip install --quiet -e "$package"
  fi
fi
if [[ "$python" == .venv/bin/python ]]; then
  echo "$wanted" > "$ready"
fi
if [[ "$target" == "lock" ]]; then
  # gen[test]'s installed dependency closure, pinned: what the next install will get.
  "$python" - > constraints.txt <<'PY'
import sys
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pins, todo = {}, [("gen", ("test",))]
while todo:
  name, extras = todo.pop()
  try:
    dist = metadata.distribution(name)
  except metadata.PackageNotFoundError:
    continue
  key = canonicalize_name(name)
  if key in pins and set(extras) <= pins[key][1]:
    continue
  pins[key] = (f"{dist.metadata['Name']}=={dist.version}", pins.get(key, ("", set()))[1] | set(extras))
  for text in dist.requires or []:
    requirement = Requirement(text)
    marker = requirement.marker
    if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *extras)):
      todo.append((requirement.name, tuple(requirement.extras)))
pins.pop("gen")
print("# The versions gen's test suite passed with; ./launch.sh installs them (pip -c).")
print("# Rewritten from .venv by ./launch.sh lock, after upgrading on purpose (README).")
print(f"# python {sys.version_info[0]}.{sys.version_info[1]}")
print("\n".join(sorted(pin for pin, _ in pins.values())))
PY
  echo "Wrote constraints.txt ($(grep -vc '^#' constraints.txt) pinned packages)." >&2
  exit 0
fi

if [[ "$target" == "test" ]]; then
  exec "$python" -m pytest "$@"
fi
if [[ "$target" == "bench" ]]; then
  exec "$python" -m gen.bench "$@"
fi
if [[ "$target" == "results" ]]; then
  exec "$python" -m gen.results "$@"
fi
workdir="runs/$target"
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
exec "$python" -m gen.main --config="experiments/$target.py" --workdir="$workdir" "$@"
