#!/usr/bin/env bash
# Run ssljax on a Cloud TPU VM or pod slice: every worker runs the same command, each
# reads its own shard of the data, and jax.distributed joins them into one mesh.
#
#   launch/tpu_pod.sh create                       # make the TPU VM(s)
#   launch/tpu_pod.sh setup                        # copy this checkout, install ssljax[tpu]
#   launch/tpu_pod.sh train configs/detcon_b.py    # pre-train (extra flags are passed on)
#   launch/tpu_pod.sh eval knn                     # evaluate the run
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32, v5litepod-64),
# RUNTIME (the TPU VM image), WORKDIR and TFDS_DATA_DIR (gs:// paths every worker can
# read; datasets must be prepared there first with `tfds build`, see README.md).
set -euo pipefail

TPU_NAME=${TPU_NAME:-ssljax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
WORKDIR=${WORKDIR:?set WORKDIR to a gs:// directory for checkpoints and metrics}
TFDS_DATA_DIR=${TFDS_DATA_DIR:?set TFDS_DATA_DIR to the gs:// directory holding prepared tfds datasets}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ;;
  setup)
    tar czf /tmp/ssljax.tgz --exclude=.git --exclude=runs .
    gcloud compute tpus tpu-vm scp /tmp/ssljax.tgz "$TPU_NAME": --zone="$ZONE" --worker=all
    on_all_workers "mkdir -p ssljax && tar xzf ssljax.tgz -C ssljax && \
      cd ssljax && pip install -q -e '.[tpu]'"
    ;;
  train)
    config=${2:?usage: $0 train CONFIG[:PRESET] [--config.x=y ...]}
    shift 2
    on_all_workers "cd ssljax && TFDS_DATA_DIR=$TFDS_DATA_DIR python main.py \
      --config=$config --workdir=$WORKDIR --distributed $*"
    ;;
  eval)
    protocol=${2:-knn}
    shift $(( $# >= 2 ? 2 : 1 ))
    on_all_workers "cd ssljax && TFDS_DATA_DIR=$TFDS_DATA_DIR python -m ssljax.eval $protocol \
      --workdir=$WORKDIR $*"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    sed -n '2,14p' "$0"
    exit 1
    ;;
esac
