#!/usr/bin/env bash
# A miniature of Momentum² Teacher's Table 1 (Li, Liu & Sun 2021) on Fashion-MNIST: the same
# pre-training (configs/m2_teacher.py:fashion_mnist, same seed, same steps) under three
# student / teacher batch-norm choices, then 20-NN (and 200-NN) top-1 of each encoder.
#
#   student BN      teacher BN                      paper (STL10, 400 ep)
#   local (n)       local (n)        plain BN       84.16
#   local (n)       momentum (n)     Momentum BN    88.18
#   sync            sync             plain BN       88.06
#
# "local (n)" is BN over groups of n images (GROUP, default 16), independent of the device
# count; "sync" is the whole global batch (256).
#
#   bash benchmarks/m2t_table1.sh [WORKROOT] [--config.FIELD=VALUE ...]
#
# Environment: TOTAL_STEPS (default 0 = the preset's 10 epochs, ~2340 steps), GROUP (16).
# A workdir that already holds a finished run is only re-evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/m2t_table1}
shift $(( $# >= 1 ? 1 : 0 ))
steps=${TOTAL_STEPS:-0}
group=${GROUP:-16}
config=configs/m2_teacher.py:fashion_mnist

names=(local_local local_momentum sync_sync)
flags=(
  "--config.student_bn_group=$group --config.teacher_bn=batch --config.teacher_bn_group=$group"
  "--config.student_bn_group=$group --config.teacher_bn=momentum --config.teacher_bn_group=$group"
  "--config.student_bn_group=sync --config.teacher_bn=batch --config.teacher_bn_group=sync"
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
python -c "import jax; print('jax', jax.__version__, jax.devices())"
echo "config: $config total_steps=$steps group=$group $*"
mkdir -p "$root"

for i in "${!names[@]}"; do
  name=${names[$i]}
  workdir=$root/$name
  start=$(date +%s)
  # shellcheck disable=SC2086
  python main.py --config="$config" --workdir="$workdir" --config.total_steps="$steps" \
    ${flags[$i]} "$@" 2>&1 | tee "$root/$name.train.log"
  echo "$(( $(date +%s) - start ))" > "$root/$name.seconds"
  python -m ssljax.eval knn --workdir="$workdir" | tail -n 1 > "$root/$name.knn.json"
done
python -m ssljax.eval knn --workdir="$root/${names[0]}" --random-init | tail -n 1 \
  > "$root/random_init.knn.json"

python - "$root" "${names[@]}" <<'EOF'
import json, re, sys
from pathlib import Path

root, names = Path(sys.argv[1]), sys.argv[2:]
print(f"\n{'student/teacher BN':<22} {'20-NN top-1':>12} {'200-NN top-1':>13} {'img/s':>8} "
      f"{'wall s':>7} {'steps':>6}")
for name in names + ["random_init"]:
    knn = json.loads((root / f"{name}.knn.json").read_text())
    log = root / f"{name}.train.log"
    rate = re.findall(r"([\d.]+) images/s", log.read_text()) if log.exists() else []
    seconds = (root / f"{name}.seconds").read_text().strip() if log.exists() else "-"
    label = name.replace("_", " / ", 1) if name != "random_init" else "random init"
    print(f"{label:<22} {100 * knn['top1_k20']:>11.2f}% {100 * knn['top1_k200']:>12.2f}% "
          f"{rate[-1] if rate else '-':>8} {seconds:>7} {knn.get('checkpoint') or '-':>6}")
EOF
