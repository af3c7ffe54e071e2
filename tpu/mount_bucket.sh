#!/usr/bin/env bash
# Mount a Cloud Storage bucket at the same path on every worker (gcsfuse), so that all hosts
# write one run folder: Orbax saves each host's shards of a checkpoint into the same folder.
#   BUCKET=my-bucket MOUNT_POINT=/home/$USER/gcs tpu/mount_bucket.sh
# Then train with RUN_DIR=$MOUNT_POINT/runs/<name>.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

BUCKET="${BUCKET:?set BUCKET to a Cloud Storage bucket name (without gs://)}"
MOUNT_POINT="${MOUNT_POINT:-gcs}"  # relative paths are under each worker's home

echo "installing gcsfuse and mounting gs://$BUCKET at ~/$MOUNT_POINT on all workers"
on_workers "set -e
if ! command -v gcsfuse >/dev/null; then
  repo=gcsfuse-\$(lsb_release -c -s)
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$repo main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
cd ~ && mkdir -p $MOUNT_POINT
mountpoint -q $MOUNT_POINT || gcsfuse --implicit-dirs $BUCKET $MOUNT_POINT
echo mounted: \$(cd $MOUNT_POINT && pwd)"
