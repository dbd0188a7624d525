#!/usr/bin/env bash
# Creates ./.venv with cadc_ray and its dev tools, CPU torch first.
#
# Why torch first: `pip install torch` from PyPI on Linux pulls a multi-GB CUDA
# build. Installing the CPU build before the package makes pip keep it (any
# torch>=2.4 satisfies cadc_ray). Set CADC_TORCH=skip to keep a torch you
# installed yourself (e.g. a CUDA build on a GPU node).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

if [ "${CADC_TORCH:-cpu}" != "skip" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # A local CPU wheel (torch==X+cpu) where pip's index/find-links has one,
  # else PyTorch's CPU index.
  $PIP install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || $PIP install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
    || $PIP install -q "torch==${TORCH_VERSION}"
fi
$PIP install -q -e ".[dev]"
echo "cadc_ray installed in $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
