#!/usr/bin/env bash
# Submits a sweep to a running Ray cluster as a Ray Job:
#
#   scripts/submit_sweep.sh [options] SPEC.yaml [-- extra sweep arguments]
#
#   ray up cluster.yaml                     # once
#   ray dashboard cluster.yaml              # keep running: SSH tunnel to localhost:8265
#   scripts/submit_sweep.sh tune_specs/ratio.yaml
#   scripts/submit_sweep.sh tune_specs/ratio.yaml -- --resume
#
# What it does, in order (nothing reaches the cluster before step 3):
#   1. checks the spec locally (`python -m cadc_ray.sweep SPEC --check`): a bad spec
#      fails here, before any cluster resource is requested;
#   2. finds the dashboard token (RAY_AUTH_TOKEN or ~/.ray/auth_token) and turns token
#      auth on for the Jobs client (RAY_AUTH_MODE=token), so requests carry it;
#   3. `ray job submit --working-dir .` (this repository, minus outputs) with a runtime
#      env that enables Train V2 state tracking, running
#      `python -m cadc_ray.sweep SPEC --set output_dir=... --set output_root=...`
#      where both folders are on the cluster's shared filesystem (CADC_CLUSTER_ROOT),
#      as are the raw datasets (CADC_DATA_DIR=<root>/data in the job's environment).
#
# Options:
#   --address URL     Jobs API address (default: $RAY_API_SERVER_ADDRESS, else
#                     http://127.0.0.1:8265, the tunnel `ray dashboard cluster.yaml` opens;
#                     never expose that port publicly, see docs/cluster.md)
#   --root DIR        shared folder on the cluster (default: $CADC_CLUSTER_ROOT or /mnt/cadc)
#   --no-wait         return after submission instead of streaming the job's logs
#   --submission-id ID  default: cadc-sweep-<spec name>-<UTC timestamp>
#   --code-on-cluster DIR  run the copy of this repository that every node already has at
#                     DIR (absolute; cluster.yaml's file_mounts put it at
#                     /home/ubuntu/cadc_ray and `ray up` re-syncs it) instead of uploading
#                     this checkout with the job (Ray's `local://` working dir). SPEC must
#                     be at the same relative path there. Also what a cluster whose nodes
#                     share one disk needs (Ray's fake multi-node cluster: each node would
#                     unpack the upload into the same folder, under the running job)
#   --dry-run         print the `ray job submit` command instead of running it
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

die() {
  echo "submit_sweep: $*" >&2
  exit 2
}

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
ADDRESS=${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}
CLUSTER_ROOT=${CADC_CLUSTER_ROOT:-/mnt/cadc}
NO_WAIT=()
SUBMISSION_ID=""
CODE_DIR=""
DRY_RUN=0
SPEC=""
EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --address) [ $# -ge 2 ] || die "--address needs a value"; ADDRESS=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a value"; CLUSTER_ROOT=$2; shift 2 ;;
    --no-wait) NO_WAIT=(--no-wait); shift ;;
    --submission-id) [ $# -ge 2 ] || die "--submission-id needs a value"; SUBMISSION_ID=$2; shift 2 ;;
    --code-on-cluster) [ $# -ge 2 ] || die "--code-on-cluster needs a value"; CODE_DIR=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$SPEC" ] || die "one SPEC only (got '$SPEC' and '$1'); sweep options go after --"
       SPEC=$1; shift ;;
  esac
done
[ -n "$SPEC" ] || usage 2

# The job runs from the uploaded repository: the spec must be a file inside it.
[ -f "$SPEC" ] || die "spec file not found: $SPEC"
SPEC_ABS=$(cd "$(dirname "$SPEC")" && pwd)/$(basename "$SPEC")
case "$SPEC_ABS" in
  "$REPO_ROOT"/*) SPEC_REL=${SPEC_ABS#"$REPO_ROOT"/} ;;
  *) die "spec $SPEC is outside the repository $REPO_ROOT (the job only sees the repository)" ;;
esac
case "$CLUSTER_ROOT" in
  /*) ;;
  *) die "--root must be an absolute path on the cluster's shared filesystem, got '$CLUSTER_ROOT'" ;;
esac
case "$CODE_DIR" in
  ""|/*) ;;
  *) die "--code-on-cluster must be an absolute path on the cluster's nodes, got '$CODE_DIR'" ;;
esac

# 1. Validate locally, before anything is requested from the cluster.
cd "$REPO_ROOT"
if ! CHECK_OUTPUT=$("$PYTHON" -m cadc_ray.sweep "$SPEC_REL" --check 2>&1); then
  echo "$CHECK_OUTPUT" >&2
  die "spec $SPEC_REL is invalid; nothing was submitted"
fi
SWEEP_NAME=$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$SPEC_REL")

# 2. Token auth for the Jobs client.
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  TOKEN_FILE=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  [ -s "$TOKEN_FILE" ] || die "no dashboard token at $TOKEN_FILE: create it with 'ray get-auth-token --generate' before 'ray up' (the cluster copies it)"
fi
export RAY_AUTH_MODE=token

# 3. Submit.
OUTPUT_DIR="$CLUSTER_ROOT/sweeps/$SWEEP_NAME"
OUTPUT_ROOT="$CLUSTER_ROOT/runs"
[ -n "$SUBMISSION_ID" ] || SUBMISSION_ID="cadc-sweep-$SWEEP_NAME-$(date -u +%Y%m%dT%H%M%SZ)"
if [ -n "$CODE_DIR" ]; then
  # The code is on every node already: nothing is uploaded.
  WORKING_DIR=()
  CODE_SOURCE="\"working_dir\": \"local://$CODE_DIR\""
else
  # Outputs, virtualenvs and VCS data stay home: the upload is the code and the specs.
  WORKING_DIR=(--working-dir .)
  CODE_SOURCE='"excludes": [".git", ".venv", "runs", "benchmarks/results", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"]'
fi
RUNTIME_ENV=$(cat <<JSON
{"env_vars": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1", "CADC_DATA_DIR": "$CLUSTER_ROOT/data"},
 $CODE_SOURCE}
JSON
)
COMMAND=(ray job submit
  --address "$ADDRESS"
  --submission-id "$SUBMISSION_ID"
  "${WORKING_DIR[@]}"
  --runtime-env-json "$RUNTIME_ENV"
  "${NO_WAIT[@]}"
  --
  python -m cadc_ray.sweep "$SPEC_REL"
  --set "output_dir=$OUTPUT_DIR"
  --set "output_root=$OUTPUT_ROOT"
  "${EXTRA[@]}")

echo "submit_sweep: $SPEC_REL ($SWEEP_NAME) -> $ADDRESS as $SUBMISSION_ID; results in $OUTPUT_DIR" >&2
if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${COMMAND[@]}"
  echo
  exit 0
fi
if ! "${COMMAND[@]}"; then
  echo "submit_sweep: the job failed or could not be submitted. Is 'ray dashboard cluster.yaml' running (tunnel to $ADDRESS)? Logs: ray job logs --address $ADDRESS $SUBMISSION_ID" >&2
  exit 1
fi
echo "submit_sweep: fetch the results with: scripts/fetch_results.sh $SWEEP_NAME" >&2
