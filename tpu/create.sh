#!/usr/bin/env bash
# Create a TPU VM slice: TPU_NAME, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION, PROJECT, SPOT=1.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

args=(--accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION")
if [[ "$SPOT" == "1" ]]; then
  args+=(--spot)
fi
echo "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, runtime $RUNTIME_VERSION) in $ZONE"
run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "${args[@]}"
run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
  --format "value(state,acceleratorType)"
