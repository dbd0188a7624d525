#!/usr/bin/env bash
# scripts/gpu_check.sh on a lent GPU machine, in one device call:
#
#   here:        python scripts/device_kit.py --ml1m ../shared/data/ml-1m   # -> .device_kit/
#   the device:  bash scripts/device_gpu_check.sh [gpu_check.sh options]
#                (the `run` tool with carry=[".device_kit"], timeout_s about 540)
#
# The device machine has CUDA torch, numpy, pandas and pyarrow but no Ray, and no package
# index. This installs the kit's wheels (scripts/device_kit.py) into $SITE, puts them and
# this checkout on PYTHONPATH (Ray's workers inherit it), runs gpu_check.sh on the kit's
# ML-1M copy (synthetic without one), and leaves in $OUT (default runs/device): the
# report gpu_check.json, the console log, and both runs' results.json.
# Options are gpu_check.sh's (no DATA: the kit decides). Environment: PYTHON (default
# python3), SITE (default /tmp/cadc_site), KIT (default .device_kit), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/cadc_site}
KIT=${KIT:-.device_kit}
RESULTS=${OUT:-runs/device}
WORKDIR=/tmp/cadc_gpu_check

if ! ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
  echo "device_gpu_check: no wheels in $KIT/wheels: run 'python scripts/device_kit.py' where pip reaches an index, and carry $KIT" >&2
  exit 2
fi
mkdir -p "$RESULTS"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$KIT"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import ray, torch; print(f"device_gpu_check: ray {ray.__version__}, torch {torch.__version__}, CUDA device: {torch.cuda.is_available()}")'

DATA=synthetic
if [ -d "$KIT/ml-1m" ]; then DATA=$KIT/ml-1m; fi
status=0
PYTHON=$PYTHON bash scripts/gpu_check.sh --out "$RESULTS/gpu_check.json" --workdir "$WORKDIR" "$@" "$DATA" \
  2>&1 | tee "$RESULTS/gpu_check.log" || status=$?
for device in gpu cpu; do
  if [ -f "$WORKDIR/$device/results.json" ]; then
    cp "$WORKDIR/$device/results.json" "$RESULTS/${device}_results.json"
  fi
done
exit "$status"
