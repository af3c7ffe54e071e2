#!/usr/bin/env bash
# Follow the training log of one worker (WORKER, default 0: the one that writes metrics).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

WORKER="${WORKER:-0}"
LOG="${LOG:-redjax-train.log}"
echo "following ~/$LOG on worker $WORKER of $TPU_NAME (Ctrl-C stops following, not training)"
on_workers "tail -n 50 -f ~/$LOG" "$WORKER"
