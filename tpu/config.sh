#!/usr/bin/env bash
# Settings shared by the tpu/*.sh scripts; every one can be overridden from the environment:
#   TPU_NAME=my-tpu ZONE=us-central2-b ACCELERATOR_TYPE=v4-16 tpu/create.sh
# Sourced by the other scripts, not run on its own.

TPU_NAME="${TPU_NAME:-redjax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"        # v4-16 = 8 chips on 2 hosts
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"  # v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5
PROJECT="${PROJECT:-}"                                # empty: gcloud's default project
SPOT="${SPOT:-0}"                                     # 1: a Spot (preemptible) slice
REDJAX_SOURCE="${REDJAX_SOURCE:-local}"               # "local" (this checkout) or a pip spec / git URL
REMOTE_DIR="${REMOTE_DIR:-redjax}"                    # checkout folder on every worker (under ~)
RUN_DIR="${RUN_DIR:-runs/tpu}"                        # run folder, relative to REMOTE_DIR or absolute
DRY_RUN="${DRY_RUN:-0}"                               # 1: print the commands, run nothing

# Flags of every gcloud call (never empty: bash 3.2 on macOS rejects empty arrays under set -u).
GCLOUD_FLAGS=(--zone "$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_FLAGS+=(--project "$PROJECT")
fi

# Print a command (shell-quoted), then run it unless DRY_RUN=1.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" != "1" ]]; then
    "$@"
  fi
}

# Run one shell command line on the workers of the slice (default: all of them).
on_workers() {
  local command="$1" worker="${2:-all}"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker "$worker" \
    --command "$command"
}
