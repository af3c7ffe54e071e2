#!/usr/bin/env bash
# Install redjax[tpu] on every worker of the slice, then check that JAX sees all TPU chips.
#   REDJAX_SOURCE=local (default): copy this checkout (its tracked files) to ~/$REMOTE_DIR on
#                                  every worker and pip install it from there
#   REDJAX_SOURCE=<pip spec>:      e.g. "git+https://github.com/you/redjax.git@main"
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$REDJAX_SOURCE" == "local" ]]; then
  archive="$(mktemp -d)/redjax.tar.gz"
  echo "packing the tracked files of $repo into $archive"
  if [[ "$DRY_RUN" != "1" ]]; then
    git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -czf "$archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:" "${GCLOUD_FLAGS[@]}" --worker all
  unpack="rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/redjax.tar.gz -C ~/$REMOTE_DIR"
  spec="\$HOME/${REMOTE_DIR}[tpu]"
else
  unpack="mkdir -p ~/$REMOTE_DIR"
  spec="$REDJAX_SOURCE"
fi
echo "installing redjax ($spec) on all workers of $TPU_NAME"
on_workers "set -e; $unpack; python3 -m pip install -q --upgrade pip; python3 -m pip install \"$spec\""
echo "checking the devices: every worker prints its index, the global and its local chip count"
on_workers "python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.local_device_count())'"
