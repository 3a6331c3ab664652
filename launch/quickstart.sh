#!/usr/bin/env bash
# The small run on this machine: install ssljax (and Debian's Fashion-MNIST when it is
# missing and apt-get can install it), pre-train BYOL's `fashion_mnist` preset, and print
# the k-NN top-1 of the result next to a random-init network's.
#
#   bash launch/quickstart.sh [CONFIG[:PRESET]] [WORKDIR] [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/byol.py:fashion_mnist}
workdir=${2:-runs/$(basename "${config%%.py*}")_$(echo "${config#*:}" | tr -c 'a-z0-9_\n' _)}
shift $(( $# >= 2 ? 2 : $# ))

if ! [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
python -m pip install -q --root-user-action=ignore -e .
python main.py --config="$config" --workdir="$workdir" --config.eval.knn_after_training=True "$@"
