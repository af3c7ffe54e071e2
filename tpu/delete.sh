#!/usr/bin/env bash
# Delete the TPU VM slice (billing stops). Copy the run folder first (tpu/copy.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

echo "deleting TPU VM $TPU_NAME in $ZONE"
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
