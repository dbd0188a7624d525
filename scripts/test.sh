#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, type check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
"$BIN/ruff" check cadc_ray tests scripts
"$BIN/ruff" format --check cadc_ray tests scripts
"$BIN/mypy"
"$BIN/python" -m pytest "$@"
