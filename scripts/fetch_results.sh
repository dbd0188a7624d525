#!/usr/bin/env bash
# Brings a sweep's results from the cluster to this machine:
#
#   scripts/fetch_results.sh [options] SWEEP_NAME [LOCAL_DIR]
#
#   scripts/fetch_results.sh ratio                       # -> runs/sweeps/ratio/
#   scripts/fetch_results.sh --to-s3 s3://my-bucket/cadc ratio
#   scripts/fetch_results.sh --from-s3 s3://my-bucket/cadc ratio
#
# Default: `ray rsync-down` of <root>/sweeps/SWEEP_NAME from the head node (results.csv,
# results.md, best_config.yaml, plots/, the Tune state and the Train checkpoints).
#   --reports-only      fetch only the tables, best config, spec and plots (no checkpoints)
#   --to-s3 URI         first archive the folder on the head to URI/SWEEP_NAME
#                       (`aws s3 sync` on the head, through its instance profile), then fetch
#   --from-s3 URI       skip the cluster: `aws s3 sync URI/SWEEP_NAME LOCAL_DIR` (works
#                       after `ray down`, needs the AWS CLI and credentials here)
#   --mounted           the shared folder (--root) is mounted here too (the EFS/NFS share
#                       mounted on this machine, or you are on the head node): copy from it
#                       directly; no cluster config, SSH or `ray rsync-down` involved
#   --cluster FILE      cluster config (default: cluster.yaml)
#   --root DIR          shared folder on the cluster (default: $CADC_CLUSTER_ROOT or /mnt/cadc)
#   --dry-run           print the commands instead of running them
# LOCAL_DIR defaults to runs/sweeps/SWEEP_NAME; files are written there directly.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

die() {
  echo "fetch_results: $*" >&2
  exit 2
}

CLUSTER=cluster.yaml
CLUSTER_ROOT=${CADC_CLUSTER_ROOT:-/mnt/cadc}
TO_S3=""
FROM_S3=""
REPORTS_ONLY=0
MOUNTED=0
DRY_RUN=0
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --cluster) [ $# -ge 2 ] || die "--cluster needs a value"; CLUSTER=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a value"; CLUSTER_ROOT=$2; shift 2 ;;
    --to-s3) [ $# -ge 2 ] || die "--to-s3 needs a value"; TO_S3=${2%/}; shift 2 ;;
    --from-s3) [ $# -ge 2 ] || die "--from-s3 needs a value"; FROM_S3=${2%/}; shift 2 ;;
    --reports-only) REPORTS_ONLY=1; shift ;;
    --mounted) MOUNTED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
[ ${#POSITIONAL[@]} -ge 1 ] && [ ${#POSITIONAL[@]} -le 2 ] || usage 2
SWEEP_NAME=${POSITIONAL[0]}
LOCAL_DIR=${POSITIONAL[1]:-runs/sweeps/$SWEEP_NAME}

# The name becomes part of remote paths: keep it a plain folder name.
case "$SWEEP_NAME" in
  ""|.*|*/*|*[!A-Za-z0-9._-]*) die "sweep name must be a plain folder name ([A-Za-z0-9._-]), got '$SWEEP_NAME'" ;;
esac
[ -z "$TO_S3" ] || [ -z "$FROM_S3" ] || die "--to-s3 and --from-s3 exclude each other"
[ "$MOUNTED" = 0 ] || [ -z "$TO_S3$FROM_S3" ] || die "--mounted copies from the shared folder; it excludes --to-s3 and --from-s3"
for uri in "$TO_S3" "$FROM_S3"; do
  case "$uri" in ""|s3://?*) ;; *) die "expected an s3://bucket/prefix URI, got '$uri'" ;; esac
done
REMOTE_DIR="$CLUSTER_ROOT/sweeps/$SWEEP_NAME"
if [ "$MOUNTED" = 1 ]; then
  [ -d "$REMOTE_DIR" ] || die "no sweep folder $REMOTE_DIR (is the shared folder mounted here at --root $CLUSTER_ROOT?)"
elif [ -z "$FROM_S3" ]; then
  [ -f "$CLUSTER" ] || die "cluster config not found: $CLUSTER"
fi
REPORT_FILES=(results.csv results.md best_config.yaml spec.yaml spec.json plots)

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

run mkdir -p "$LOCAL_DIR"
if [ "$MOUNTED" = 1 ]; then
  if [ "$REPORTS_ONLY" = 1 ]; then
    for name in "${REPORT_FILES[@]}"; do
      if [ -e "$REMOTE_DIR/$name" ]; then
        run cp -R "$REMOTE_DIR/$name" "$LOCAL_DIR/"
      else
        echo "fetch_results: $REMOTE_DIR/$name not fetched (missing)" >&2
      fi
    done
  else
    run cp -R "$REMOTE_DIR/." "$LOCAL_DIR/"
  fi
elif [ -n "$FROM_S3" ]; then
  if [ "$REPORTS_ONLY" = 1 ]; then
    run aws s3 sync "$FROM_S3/$SWEEP_NAME" "$LOCAL_DIR" --exclude "tune/*" --exclude "train/*" --exclude "pretrained/*"
  else
    run aws s3 sync "$FROM_S3/$SWEEP_NAME" "$LOCAL_DIR"
  fi
else
  if [ -n "$TO_S3" ]; then
    run ray exec "$CLUSTER" "aws s3 sync '$REMOTE_DIR' '$TO_S3/$SWEEP_NAME'"
  fi
  if [ "$REPORTS_ONLY" = 1 ]; then
    for name in "${REPORT_FILES[@]}"; do
      # plots/ and best_config.yaml may be missing (no finished trial, no matplotlib)
      run ray rsync-down "$CLUSTER" "$REMOTE_DIR/$name" "$LOCAL_DIR/" \
        || echo "fetch_results: $REMOTE_DIR/$name not fetched" >&2
    done
  else
    run ray rsync-down "$CLUSTER" "$REMOTE_DIR/" "$LOCAL_DIR/"
  fi
fi
echo "fetch_results: $SWEEP_NAME -> $LOCAL_DIR" >&2
