#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host or a pod slice), installs kmedimg on every host,
# runs a recipe on it with data and run directory on gs://, and optionally deletes it.
#
#   tpu/launch_pod.sh --name kmed-v4 --zone us-central2-b --accelerator-type v4-32 \
#       --config recipes/two_stage.yaml --data gs://b/datasets/cxr --run-dir gs://b/runs/cxr-1 \
#       [--project P] [--version tpu-vm-tf-2.16.1-pod-pjrt] [--spot] [--service-account SA]
#       [--package 'kmedimg[tune]'] [--delete-after] [--dry-run]
#
# A single-host slice (v4-8, v5litepod-8, ...) trains with tpu="local"; a multi-host
# slice (v4-16 and larger) runs the trainer on worker 0 with TPU_NAME set, which
# reaches every host. --dry-run prints the commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

NAME="" ZONE="" ACCELERATOR="" CONFIG="" DATA="" RUN_DIR="" PROJECT="" VERSION="" SERVICE_ACCOUNT=""
PACKAGE="kmedimg[tune,report]" SPOT=0 DELETE_AFTER=0 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator-type) ACCELERATOR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --run-dir) RUN_DIR="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --service-account) SERVICE_ACCOUNT="$2"; shift 2 ;;
    --package) PACKAGE="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --delete-after) DELETE_AFTER=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "launch_pod.sh: unknown argument: $1" >&2; usage ;;
  esac
done

fail() { echo "launch_pod.sh: error: $*" >&2; exit 2; }
for required in NAME ZONE ACCELERATOR CONFIG DATA RUN_DIR; do
  [[ -n "${!required}" ]] || fail "--$(echo "$required" | tr 'A-Z_' 'a-z-' | sed 's/accelerator/accelerator-type/') is required"
done
[[ -f "$CONFIG" ]] || fail "--config must be a recipe file. Received: --config=$CONFIG"
# TPU hosts cannot see this machine's disk (kmedimg.distribute.check_paths_for_tpu).
[[ "$DATA" == gs://* ]] || fail "TPU workers read only gs:// paths; stage the data with tpu/stage_to_gcs.sh. Received: --data=$DATA"
[[ "$RUN_DIR" == gs://* ]] || fail "TPU workers write only gs:// paths. Received: --run-dir=$RUN_DIR"

# Chips per host is 4 on v2/v3/v4/v5p (accelerator suffix counts TensorCores on
# v2-v4, chips on v5+); more than 8 cores / chips means several hosts.
CORES="${ACCELERATOR##*-}"
[[ "$CORES" =~ ^[0-9]+$ ]] || fail "--accelerator-type must end in a core/chip count, e.g. v4-8, v5litepod-16. Received: --accelerator-type=$ACCELERATOR"
MULTI_HOST=0
if (( CORES > 8 )); then MULTI_HOST=1; fi
# tpu-vm-tf-<version>[-pod]-pjrt: the TensorFlow TPU runtime image (tpu/README.md).
if [[ "$MULTI_HOST" == 1 ]]; then
  TPU_TARGET="$NAME"; VERSION="${VERSION:-tpu-vm-tf-2.16.1-pod-pjrt}"
else
  TPU_TARGET="local"; VERSION="${VERSION:-tpu-vm-tf-2.16.1-pjrt}"
fi

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then COMMON+=(--project="$PROJECT"); fi

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

CREATE=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
if [[ "$SPOT" == 1 ]]; then CREATE+=(--spot); fi
if [[ -n "$SERVICE_ACCOUNT" ]]; then CREATE+=(--service-account="$SERVICE_ACCOUNT"); fi
run "${CREATE[@]}"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all \
  --command="pip install --upgrade '$PACKAGE'"
run "${GCLOUD[@]}" scp "$CONFIG" "$NAME:recipe.yaml" "${COMMON[@]}" --worker=all
# BackupAndRestore in RUN_DIR/backup resumes a preempted run: rerunning this
# command with the same --run-dir continues where it stopped.
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=0 \
  --command="TPU_NAME=$TPU_TARGET kmedimg train recipe.yaml --set distribute.kind=tpu --set data.path=$DATA --set training.run_dir=$RUN_DIR"
if [[ "$DELETE_AFTER" == 1 ]]; then
  run "${GCLOUD[@]}" delete "$NAME" "${COMMON[@]}" --quiet
fi
