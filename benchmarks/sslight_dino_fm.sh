#!/usr/bin/env bash
# SSLight on Fashion-MNIST: DINO with the baseline view sampling vs the recipe, same network,
# seed, batch and steps (configs/sslight_dino.py:fashion_mnist_baseline and :fashion_mnist).
# Prints the machine, each run's wall time, images/s, final loss, teacher entropy and mean
# pixel-scale ratio PS_g/PS_l, then the 20-NN (and 200-NN) top-1 of each trained encoder and
# of the shared random-init encoder. Extra arguments go to both training runs.
#
#   bash benchmarks/sslight_dino_fm.sh [WORKDIR_ROOT] [--config.x=y ...]
#   bash benchmarks/sslight_dino_fm.sh /tmp/sslight_check --config.total_steps=4   # a check
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/sslight_dino_fm}
shift $(($# >= 1 ? 1 : 0))
quiet="oneDNN\|InitializeLog\|cpu_feature_guard\|To enable the following\|FeatureConnector"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -g | awk '/Mem:/{print $2}') GiB"
for variant in fashion_mnist_baseline fashion_mnist; do
  workdir="$root/$variant"
  rm -rf "$workdir"
  echo "== $variant: load before $(cut -d' ' -f1-3 /proc/loadavg)"
  start=$(date +%s)
  python main.py --config="configs/sslight_dino.py:$variant" --workdir="$workdir" "$@" 2>&1 |
    grep -v "$quiet"
  end=$(date +%s)
  echo "wall time (training incl. compilation): $((end - start)) s;" \
    "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  python - "$workdir" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
steady = rows[1:] or rows
mean = lambda key, rs: sum(r[key] for r in rs) / len(rs)
print(f"steps {rows[-1]['step']}, epochs {rows[-1]['epoch']:.2f}, final loss {rows[-1]['loss']:.4f}, "
      f"final teacher entropy {rows[-1]['teacher_entropy']:.3f}, "
      f"mean pixel_scale_ratio over logged batches {mean('pixel_scale_ratio', rows):.3f}, "
      f"mean images/s after the first log interval {mean('images_per_sec', steady):.1f}")
PY
done
for variant in fashion_mnist_baseline fashion_mnist; do
  echo "== k-NN $variant (trained)"
  python -m ssljax.eval knn --workdir="$root/$variant" 2>/dev/null | tail -n 1
done
echo "== k-NN random init (the same network and seed as both runs)"
python -m ssljax.eval knn --workdir="$root/fashion_mnist" --random-init 2>/dev/null | tail -n 1
