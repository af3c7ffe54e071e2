#!/usr/bin/env bash
# Train one config on all workers of the slice at once (one process per host).
#   CONFIG=configs/default.yaml OVERRIDES="train.steps=100 mesh.fsdp=4" tpu/run.sh
# jax.distributed.initialize() finds the other hosts itself on a TPU VM (REDJAX_DISTRIBUTED=1).
# DETACH=1 runs in the background (survives a dropped ssh); follow it with tpu/logs.sh.
# Re-running the same command resumes from the last checkpoint in RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

CONFIG="${CONFIG:-}"        # a YAML file relative to ~/$REMOTE_DIR; empty: the built-in default
OVERRIDES="${OVERRIDES:-}"  # dotted key=value overrides, space separated
DETACH="${DETACH:-0}"
LOG="${LOG:-redjax-train.log}"

train="REDJAX_DISTRIBUTED=1 python3 -m redjax.cli train $CONFIG $OVERRIDES train.run_dir=$RUN_DIR"
if [[ "$DETACH" == "1" ]]; then
  command="cd ~/$REMOTE_DIR && nohup env $train > ~/$LOG 2>&1 < /dev/null &"
else
  command="set -o pipefail; cd ~/$REMOTE_DIR && $train 2>&1 | tee ~/$LOG"
fi
echo "training on all workers of $TPU_NAME: ${CONFIG:-built-in default} ${OVERRIDES}"
on_workers "$command"
