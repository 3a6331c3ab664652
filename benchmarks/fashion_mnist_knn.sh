#!/usr/bin/env bash
# Pre-train one config's `fashion_mnist` preset on this machine and report what
# docs/benchmarks.md records: the machine, wall time, images/s, and the 20-NN top-1 of
# the trained network vs a random-init network of the same config vs raw pixels.
#
#   bash benchmarks/fashion_mnist_knn.sh [CONFIG[:PRESET]] [WORKDIR] [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/byol.py:fashion_mnist}
workdir=${2:-runs/bench_$(basename "${config%%.py*}")}
shift $(( $# >= 2 ? 2 : $# ))
rm -rf "$workdir"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
python main.py --config="$config" --workdir="$workdir" "$@" 2>&1 | grep -v "oneDNN\|InitializeLog"
end=$(date +%s)
echo "wall time (training incl. compilation): $((end - start)) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python - "$workdir" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
steady = rows[1:] or rows
images = sum(r["images_per_sec"] for r in steady) / len(steady)
print(f"steps {rows[-1]['step']}, epochs {rows[-1]['epoch']:.2f}, final loss {rows[-1]['loss']:.4f}, "
      f"mean images/s after the first log interval {images:.1f}")
PY
for mode in "" --random-init --raw-pixels; do
  python -m ssljax.eval knn --workdir="$workdir" $mode 2>/dev/null | tail -n 1
done
