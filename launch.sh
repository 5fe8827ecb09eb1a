#!/usr/bin/env bash
# gen's one entry point.
#   ./launch.sh <experiment> [--workdir=DIR] [--mode=train|sample|eval|report] [--config.KEY=VALUE ...]
#   ./launch.sh test [pytest args]
#   ./launch.sh bench <experiment> [--batch_size=B] [--steps=N] [--json]
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
  echo "experiments:"
  experiments
}

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 2
fi
target="$1"
shift
if [[ "$target" != "test" && "$target" != "bench" && ! -f "experiments/$target.py" ]]; then
  echo "error: unknown experiment '$target'. Available experiments:" >&2
  experiments >&2
  exit 2
fi

# What this target imports, and what installs it: the tests need the test extra too; an
# experiment only gen (so a .venv prepared with `pip install -e .` is used as it is).
if [[ "$target" == "test" ]]; then
  needs="import gen.main, pytest, xdist, nbclient"
  package=".[test]"
else
  needs="import gen.main"
  package="."
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
if ! "$python" -c "$needs" 2>/dev/null; then
  echo "Installing gen and its dependencies into .venv (first use only)..." >&2
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  python=.venv/bin/python
  "$python" -m pip install --quiet --upgrade pip
  "$python" -m pip install --quiet -e "$package"
fi

if [[ "$target" == "test" ]]; then
  exec "$python" -m pytest "$@"
fi
if [[ "$target" == "bench" ]]; then
  exec "$python" -m gen.bench "$@"
fi
workdir="runs/$target"
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
exec "$python" -m gen.main --config="experiments/$target.py" --workdir="$workdir" "$@"
