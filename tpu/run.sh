#!/usr/bin/env bash
# Train one config on all workers of the slice at once (one process per host).
#   CONFIG=configs/default.yaml OVERRIDES="train.steps=100 mesh.fsdp=4" tpu/run.sh
# jax.distributed.initialize() finds the other hosts itself on a TPU VM (REDJAX_DISTRIBUTED=1).
# DETACH=1 runs in the background (survives a dropped ssh); follow it with tpu/logs.sh.
# Re-running the same command resumes from the last checkpoint in RUN_DIR.
#
# Restarts (DETACH=0): the trainer exits 0 only when the run is finished; after a preemption
# (SIGTERM: it saves, then exits 143), a crash, or a lost ssh (the VM was reclaimed) this script
# stops what is left of the run on every worker, recreates a slice that is no longer READY
# (a preempted Spot slice: delete.sh, create.sh, install.sh, and mount_bucket.sh when BUCKET is
# set), and runs the same command again, up to RESTARTS times. The run resumes from its last
# checkpoint, so the run folder must outlive the VM: a mounted bucket (RUN_DIR under it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

CONFIG="${CONFIG:-}"        # a YAML file relative to ~/$REMOTE_DIR; empty: the built-in default
OVERRIDES="${OVERRIDES:-}"  # dotted key=value overrides, space separated
DETACH="${DETACH:-0}"
LOG="${LOG:-redjax-train.log}"
RESTARTS="${RESTARTS:-20}"          # how many times to re-run after an unfinished exit
RESTART_DELAY="${RESTART_DELAY:-30}"  # seconds between attempts
PID_FILE="redjax-train.pid"         # under ~ on each worker: the trainer to stop before a restart
here="$(dirname "${BASH_SOURCE[0]}")"

train="REDJAX_DISTRIBUTED=1 python3 -m redjax.cli train $CONFIG $OVERRIDES train.run_dir=$RUN_DIR"
if [[ "$DETACH" == "1" ]]; then
  command="cd ~/$REMOTE_DIR && nohup env $train > ~/$LOG 2>&1 < /dev/null &"
else
  command="set -o pipefail; cd ~/$REMOTE_DIR && (env $train & echo \$! > ~/$PID_FILE; wait \$!) 2>&1 | tee -a ~/$LOG"
fi

# A slice that is not READY (preempted, deleted) is made again, with redjax and the bucket.
recover() {
  local state
  state="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
    --format "value(state)" 2>/dev/null || echo MISSING)"
  echo "TPU VM $TPU_NAME is ${state:-MISSING}"
  if [[ "$state" == "READY" ]]; then
    # Survivors of the failed attempt would block the chips and the coordinator port.
    on_workers "if [ -f ~/$PID_FILE ]; then kill \$(cat ~/$PID_FILE) 2>/dev/null || true; fi" || true
    return
  fi
  if [[ "$state" != "MISSING" ]]; then
    bash "$here/delete.sh"
  fi
  bash "$here/create.sh"
  bash "$here/install.sh"
  if [[ -n "${BUCKET:-}" ]]; then
    bash "$here/mount_bucket.sh"
  fi
}

echo "training on all workers of $TPU_NAME: ${CONFIG:-built-in default} ${OVERRIDES}"
attempt=0
until on_workers "$command"; do
  if [[ "$DETACH" == "1" || "$attempt" -ge "$RESTARTS" ]]; then
    echo "training did not finish (after $attempt restarts)" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  echo "training did not finish; restart $attempt of $RESTARTS in ${RESTART_DELAY}s"
  sleep "$RESTART_DELAY"
  recover
done
