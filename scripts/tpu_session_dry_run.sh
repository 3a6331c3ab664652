#!/usr/bin/env bash
# One whole Cloud TPU session as launch/tpu_pod.sh would run it, printed instead of run
# (DRY_RUN=1): create -> setup -> train -> (preempted) -> resume -> eval -> delete.
# docs/tpu.md holds its output: bash scripts/tpu_session_dry_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DRY_RUN=1 SPOT=1 TPU_NAME=ssljax ZONE=us-central1-a ACCELERATOR=v5litepod-64
export WORKDIR=gs://BUCKET/runs/byol TFDS_DATA_DIR=gs://BUCKET/tensorflow_datasets
step() {
  echo
  echo "\$ launch/tpu_pod.sh $*"
  launch/tpu_pod.sh "$@" 2>&1 | sed -e "s|$PWD|/path/to/ssljax|g" -e 's|/ssljax-[0-9]*\.tgz|/ssljax-PID.tgz|g'
}
step create
step setup
step train configs/byol.py "--config.model.dtype=bfloat16"
step logs
step status
echo
echo "# ... the spot slice is preempted: the queued resource turns SUSPENDED ..."
DRY_RUN_STATE=SUSPENDED step resume configs/byol.py "--config.model.dtype=bfloat16"
echo
echo "# ... training has ended (launch/tpu_pod.sh status: idle) ..."
step eval knn
step logs eval-knn
step eval linear --protocol=byol
step delete
