#!/usr/bin/env bash
# Copy the run folder (metrics, TensorBoard events, eval table, checkpoints) from worker 0,
# which writes the logs, to DEST on this machine. A run folder on a mounted bucket
# (tpu/mount_bucket.sh) is in Cloud Storage already: gcloud storage cp -r gs://BUCKET/PATH DEST
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

DEST="${DEST:-runs}"
if [[ "$RUN_DIR" == /* ]]; then
  remote="$RUN_DIR"
else
  remote="$REMOTE_DIR/$RUN_DIR"  # scp resolves a relative remote path from the home folder
fi
run mkdir -p "$DEST"
echo "copying $TPU_NAME:$remote (worker 0) to $DEST/"
run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$remote" "$DEST/" "${GCLOUD_FLAGS[@]}" \
  --worker 0
