#!/usr/bin/env bash
# Copies a kmedimg dataset directory (dataset.json + TFRecord shards) to Cloud
# Storage and lets the TPU's service account read it and write run directories.
#
#   tpu/stage_to_gcs.sh --source data/phantoms --bucket gs://my-bucket \
#       --project my-project --service-account SA_EMAIL [--create-bucket --region us-central2] [--dry-run]
#
# Layout written (see tpu/README.md):
#   gs://BUCKET/datasets/<name>/dataset.json + shards   (read by every TPU host)
#   gs://BUCKET/runs/                                    (run directories, checkpoints)
# --dry-run prints the commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

SOURCE="" BUCKET="" PROJECT="" SERVICE_ACCOUNT="" NAME="" REGION="" CREATE_BUCKET=0 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --source) SOURCE="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --service-account) SERVICE_ACCOUNT="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --create-bucket) CREATE_BUCKET=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "stage_to_gcs.sh: unknown argument: $1" >&2; usage ;;
  esac
done

fail() { echo "stage_to_gcs.sh: error: $*" >&2; exit 2; }
[[ -n "$SOURCE" ]] || fail "--source is required (a directory holding dataset.json)"
[[ -f "$SOURCE/dataset.json" ]] || fail "--source must hold dataset.json (write it with 'kmedimg convert'). Received: --source=$SOURCE"
[[ "$BUCKET" == gs://* ]] || fail "--bucket must start with gs://. Received: --bucket=$BUCKET"
[[ -n "$PROJECT" ]] || fail "--project is required"
if [[ "$CREATE_BUCKET" == 1 && -z "$REGION" ]]; then
  fail "--create-bucket needs --region (the TPU's region, e.g. us-central2 for v4)"
fi
BUCKET="${BUCKET%/}"
NAME="${NAME:-$(basename "$(cd "$SOURCE" && pwd)")}"
DESTINATION="$BUCKET/datasets/$NAME"

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

if [[ "$CREATE_BUCKET" == 1 ]]; then
  # Same region as the TPU: cross-region reads cost egress and slow the input pipeline.
  run gcloud storage buckets create "$BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access
fi
# Shards first, manifest last: a reader never sees a manifest whose shards are missing.
run gcloud storage rsync --recursive --exclude='dataset\.json$' "$SOURCE" "$DESTINATION"
run gcloud storage cp "$SOURCE/dataset.json" "$DESTINATION/dataset.json"
if [[ -n "$SERVICE_ACCOUNT" ]]; then
  # TPU hosts read data and write checkpoints/run directories as this account.
  run gcloud storage buckets add-iam-policy-binding "$BUCKET" \
    --member="serviceAccount:$SERVICE_ACCOUNT" --role=roles/storage.objectAdmin
fi
run gcloud storage ls "$DESTINATION/dataset.json"
echo "data.path: $DESTINATION"
