#!/usr/bin/env bash
# Runs CADC (MF pretraining, then the TTNN) on one GPU and the same on the CPU, and
# compares throughput and metrics:
#
#   scripts/gpu_check.sh [options] [DATA]
#
#   scripts/gpu_check.sh                                  # ML-1M from $CADC_DATA_DIR, else synthetic
#   scripts/gpu_check.sh ../shared/data/ml-1m
#   scripts/gpu_check.sh synthetic --pretrain-epochs 5 --epochs 5
#
# DATA: a MovieLens-1M folder (ratings.dat or ratings*.dat[.gz], users.dat, movies.dat) or
# `synthetic` (the embedded generator, configs/synthetic.yaml). Default:
# ${CADC_DATA_DIR:-../shared/data}/ml-1m when it holds a ratings file, else synthetic.
#
# What it does, in order:
#   1. checks DATA (exit status 2 with the reason), then stops with exit status 3 unless
#      torch here sees a CUDA device (before any data work);
#   2. `python -m cadc_ray.run CONFIG --set resources.use_gpu=yes --set resources.num_workers=1`
#      (one Train worker on the GPU; `yes` fails instead of silently training on the CPU),
#      then the same run with use_gpu=no; each run starts its own local Ray;
#   3. writes benchmarks/results/gpu_check.json (temporary file + rename): for each run the
#      median samples/s of the MF and TTNN epochs (the first epoch left out when there are
#      more: CUDA start-up), the stage times, test/validation metrics; the GPU/CPU speed-ups;
#      the metric differences. The GPU draws other random negatives than the CPU (its own
#      generator), so metrics agree only within noise: exit status 1 when a test metric
#      differs by more than --tolerance (absolute, metrics are fractions).
#
# Options:
#   --pretrain-epochs N  MF epochs (default 3)
#   --epochs N           TTNN epochs (default 3; early stopping off)
#   --tolerance X        largest accepted |GPU - CPU| of a test metric (default 0.02)
#   --out FILE           result file (default benchmarks/results/gpu_check.json)
#   --workdir DIR        run folders (default runs/gpu_check)
#   --rehearse           check this script on a machine without a GPU: the GPU run's local
#                        Ray advertises one fake GPU (RAY_OVERRIDE_RESOURCES), so its Train
#                        worker is scheduled as a GPU worker and computes on the CPU (with
#                        the device module's warning). The report says "rehearsal": true
#                        and goes to $WORKDIR/gpu_check_rehearsal.json unless --out is
#                        given; its numbers are not a GPU's. Both runs then compute on the
#                        CPU with the same seeds, so their test metrics must be equal.
# Environment: PYTHON (default .venv/bin/python, else python3).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

die() {
  echo "gpu_check: $*" >&2
  exit 2
}

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO_ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PRETRAIN_EPOCHS=3
EPOCHS=3
TOLERANCE=0.02
OUT=""
WORKDIR=runs/gpu_check
DATA=""
REHEARSE=no
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --pretrain-epochs) [ $# -ge 2 ] || die "--pretrain-epochs needs a value"; PRETRAIN_EPOCHS=$2; shift 2 ;;
    --epochs) [ $# -ge 2 ] || die "--epochs needs a value"; EPOCHS=$2; shift 2 ;;
    --tolerance) [ $# -ge 2 ] || die "--tolerance needs a value"; TOLERANCE=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --workdir) [ $# -ge 2 ] || die "--workdir needs a value"; WORKDIR=$2; shift 2 ;;
    --rehearse) REHEARSE=yes; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$DATA" ] || die "one DATA only (got '$DATA' and '$1')"; DATA=$1; shift ;;
  esac
done
for value in "$PRETRAIN_EPOCHS" "$EPOCHS"; do
  case "$value" in ''|*[!0-9]*|0) die "epochs must be positive integers, got '$value'" ;; esac
done

if [ -z "$OUT" ]; then
  if [ "$REHEARSE" = yes ]; then OUT=$WORKDIR/gpu_check_rehearsal.json; else OUT=benchmarks/results/gpu_check.json; fi
fi

# 1. The dataset and its config, checked before anything else.
check_ratings() {  # the product's own lookup (ratings.dat, .dat.gz, ratings*.dat[.gz]):
  # silent when the folder $1 holds one ratings file, else the reason on stderr, status 1
  "$PYTHON" -c '
import sys
from pathlib import Path
from cadc_ray.data.readers.movielens import find_ratings_file
try:
    find_ratings_file(Path(sys.argv[1]))
except Exception as error:
    sys.exit(str(error))
' "$1"
}
if [ -z "$DATA" ]; then
  DEFAULT_ML1M=${CADC_DATA_DIR:-$REPO_ROOT/../shared/data}/ml-1m
  if [ -d "$DEFAULT_ML1M" ] && check_ratings "$DEFAULT_ML1M" 2>/dev/null; then
    DATA=$DEFAULT_ML1M
  else
    DATA=synthetic
  fi
fi
if [ "$DATA" = synthetic ]; then
  CONFIG=configs/synthetic.yaml
  DATA_SETS=()
else
  [ -d "$DATA" ] || die "$DATA is not a folder (expected a MovieLens-1M folder, or 'synthetic')"
  PROBLEM=$(check_ratings "$DATA" 2>&1) \
    || die "$(tail -n 1 <<<"$PROBLEM") (expected a MovieLens-1M folder, or 'synthetic')"
  CONFIG=configs/ml-1m.yaml
  DATA_SETS=(--set "data.path=$(cd "$DATA" && pwd)")
fi
echo "gpu_check: data $DATA ($CONFIG)" >&2

# 2. A GPU, or nothing is run.
PROBE_ERRORS=$(mktemp)
trap 'rm -f "$PROBE_ERRORS"' EXIT
if [ "$REHEARSE" = yes ]; then
  GPU_NAME="none: rehearsal (one fake GPU resource, computed on the CPU)"
elif ! GPU_NAME=$("$PYTHON" -c '
import sys, torch
if not torch.cuda.is_available():
    build = torch.version.cuda or "none"
    sys.exit(f"torch {torch.__version__} (CUDA build: {build}) sees no CUDA device")
print(torch.cuda.get_device_name(0))
' 2>"$PROBE_ERRORS"); then
  echo "gpu_check: no GPU visible here: $(tail -n 1 "$PROBE_ERRORS")." >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU and the CUDA build of torch (pip install torch; see docs/cluster.md, 'GPU pools'). Nothing was run." >&2
  exit 3
fi

echo "gpu_check: $GPU_NAME; MF $PRETRAIN_EPOCHS + TTNN $EPOCHS epochs" >&2

run_on() {  # run_on gpu|cpu
  local device=$1 use_gpu=no
  local fake_gpu=()
  [ "$device" = gpu ] && use_gpu=yes
  # A rehearsal's GPU run: the local Ray that cadc_ray.run starts advertises one GPU.
  [ "$device" = gpu ] && [ "$REHEARSE" = yes ] && fake_gpu=(RAY_OVERRIDE_RESOURCES='{"GPU": 1}')
  echo "gpu_check: $device run -> $WORKDIR/$device" >&2
  env "${fake_gpu[@]}" "$PYTHON" -m cadc_ray.run "$CONFIG" "${DATA_SETS[@]}" \
    --set "name=gpu-check-$device" \
    --set "resources.use_gpu=$use_gpu" \
    --set resources.num_workers=1 \
    --set "pretrain.epochs=$PRETRAIN_EPOCHS" \
    --set "train.epochs=$EPOCHS" \
    --set train.early_stopping_patience=0 \
    --output "$WORKDIR/$device"
}
run_on gpu
run_on cpu

# 3. The comparison.
"$PYTHON" - "$WORKDIR" "$OUT" "$TOLERANCE" "$DATA" "$CONFIG" "$GPU_NAME" "$REHEARSE" <<'PY'
import json, os, platform, statistics, sys, time
from pathlib import Path

from cadc_ray.atomic import write_text_atomic

workdir, out, tolerance, data, config, gpu_name, rehearse = sys.argv[1:8]
tolerance = float(tolerance)
rehearsal = rehearse == "yes"


def steady_rate(history):
    """Median samples/s over the epochs, the first left out when there are more."""
    rates = [float(epoch["samples_per_second"]) for epoch in history]
    return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


runs = {}
for device in ("gpu", "cpu"):
    results = json.loads((Path(workdir) / device / "results.json").read_text())
    runs[device] = {
        "use_gpu": results["use_gpu"],
        "mf_samples_per_second": steady_rate(results["pretrain_history"]),
        "ttnn_samples_per_second": steady_rate(results["history"]),
        "mf_samples_per_second_by_epoch": [e["samples_per_second"] for e in results["pretrain_history"]],
        "ttnn_samples_per_second_by_epoch": [e["samples_per_second"] for e in results["history"]],
        "pretrain_seconds": results["pretrain_seconds"],
        "train_seconds": results["train_seconds"],
        "total_seconds": results["total_seconds"],
        "test": results["test"],
        "val": results["val"],
        "teacher_test_percent": results.get("teacher_test_percent"),
        "torch_threads": results["config"]["resources"]["torch_threads"],
        "versions": results.get("versions"),
    }
if runs["gpu"]["use_gpu"] is not True:
    sys.exit("gpu_check: the GPU run did not use GPU workers (use_gpu false in its results.json)")


def ratio(key):
    gpu, cpu = runs["gpu"][key], runs["cpu"][key]
    return gpu / cpu if gpu and cpu else None


differences = {
    name: runs["gpu"]["test"][name] - runs["cpu"]["test"][name] for name in runs["cpu"]["test"]
}
# A rehearsal computes both runs on the CPU with the same seeds: equal metrics, or a bug.
close = all(abs(value) <= (0.0 if rehearsal else tolerance) for value in differences.values())
report = {
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "rehearsal": rehearsal,
    "gpu": gpu_name,
    "data": data,
    "config": config,
    "host": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()},
    "runs": runs,
    "speedup": {"mf": ratio("mf_samples_per_second"), "ttnn": ratio("ttnn_samples_per_second")},
    "test_metric_differences": differences,
    "tolerance": tolerance,
    "metrics_close": close,
}
Path(out).parent.mkdir(parents=True, exist_ok=True)
write_text_atomic(Path(out), json.dumps(report, indent=2, sort_keys=True) + "\n")
print(
    f"gpu_check: MF {runs['gpu']['mf_samples_per_second']:,.0f} vs {runs['cpu']['mf_samples_per_second']:,.0f} samples/s, "
    f"TTNN {runs['gpu']['ttnn_samples_per_second']:,.0f} vs {runs['cpu']['ttnn_samples_per_second']:,.0f} samples/s (GPU vs CPU); "
    f"test metric differences {differences} -> {out}",
    file=sys.stderr,
)
if not close:
    if rehearsal:
        sys.exit("gpu_check: rehearsal: the two CPU-computed runs' test metrics differ")
    sys.exit(f"gpu_check: a test metric differs by more than {tolerance} between GPU and CPU")
PY
