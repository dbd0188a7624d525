#!/usr/bin/env bash
# Installs cadc_ray into a new virtual environment, with another Python or with every
# run-time dependency at the floor pyproject.toml declares, and runs the tests there.
# CI tests one corner (scripts/setup.sh: Python 3.11, the newest releases); this checks the
# others. Not part of CI: the lowest set takes torch 2.4 from PyPI, a CUDA build (its
# environment measured 5.9 GB; docs/versions.md has what ran and what it found).
#
#   bash scripts/check_versions.sh --lowest                # the oldest Python, every floor
#   bash scripts/check_versions.sh --python python3.13     # another Python, newest releases
#   bash scripts/check_versions.sh --lowest -- -m "not ray" -x   # pytest's arguments after --
#
# Options:
#   --lowest        pin every run-time requirement at its floor (scripts/lowest_constraints.py)
#                   and default --python to python3.10, the oldest requires-python admits
#   --python P      the interpreter to build the environment with (default python3)
#   --venv DIR      where (default .venv-lowest, or .venv-check); made anew every run (a
#                   folder there that is not a virtual environment is refused, not removed)
# The environment's pip freeze is left in DIR/freeze.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "check_versions: $*" >&2; exit 2; }

OLDEST_PYTHON=python3.10 # requires-python's floor (tests/test_check_versions.py keeps them equal)
LOWEST=no
PYTHON=
VENV=
while [ $# -gt 0 ]; do
  case "$1" in
    --lowest) LOWEST=yes; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift 2 ;;
    --venv) [ $# -ge 2 ] || die "--venv needs a value"; VENV=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 (options: --lowest, --python P, --venv DIR, then -- and pytest's)" ;;
  esac
done
if [ -z "$PYTHON" ]; then
  if [ "$LOWEST" = yes ]; then PYTHON=$OLDEST_PYTHON; else PYTHON=python3; fi
fi
if [ -z "$VENV" ]; then
  if [ "$LOWEST" = yes ]; then VENV=.venv-lowest; else VENV=.venv-check; fi
fi
command -v "$PYTHON" >/dev/null || die "no interpreter '$PYTHON' on PATH"
# A pyenv shim is on PATH even for a version it does not activate; it fails when run.
"$PYTHON" -c 'import sys' 2>/dev/null \
  || die "'$PYTHON' does not run (a pyenv shim? pass --python with the interpreter's path)"
[ "$(realpath -m "$VENV")" != "$(realpath -m .venv)" ] \
  || die "--venv $VENV is the development environment; name another folder"
# Made anew, so removed first: only a folder that is a virtual environment.
[ ! -e "$VENV" ] || [ -f "$VENV/pyvenv.cfg" ] \
  || die "$VENV exists and is not a virtual environment (no pyvenv.cfg): not removing it"

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
VENV=$(cd "$VENV" && pwd) # absolute: pip and setup.sh get it
"$VENV/bin/python" -m pip install -q --upgrade pip packaging
if [ "$LOWEST" = yes ]; then
  "$VENV/bin/python" -c 'import tomllib' 2>/dev/null || "$VENV/bin/python" -m pip install -q tomli
  "$VENV/bin/python" scripts/lowest_constraints.py pyproject.toml >"$VENV/lowest-constraints.txt"
  echo "check_versions: pinned at the floors:" $(cat "$VENV/lowest-constraints.txt") >&2
  # pip reads PIP_CONSTRAINT (it replaces any constraint file of pip's own configuration);
  # torch comes from the pins too, not from setup.sh's CPU build of the newest release.
  export PIP_CONSTRAINT="$VENV/lowest-constraints.txt" CADC_TORCH=skip
fi
VENV="$VENV" PYTHON="$PYTHON" bash scripts/setup.sh
"$VENV/bin/python" -m pip freeze --exclude-editable >"$VENV/freeze.txt"
echo "check_versions: $("$VENV/bin/python" --version);" \
  $(grep -i -E '^(torch|ray|numpy|pandas|pyarrow|optuna|scipy|implicit|threadpoolctl)==' "$VENV/freeze.txt") >&2
exec "$VENV/bin/python" -m pytest "$@"
