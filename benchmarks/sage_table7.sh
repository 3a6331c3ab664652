#!/usr/bin/env bash
# A Fashion-MNIST miniature of SaGe's Table 7 (Xu et al. 2021): what the generation loss
# and its evaluator add to BYOL, in k-NN / linear accuracy and in the perceptual test.
#
#   row                 configs/sage.py:fashion_mnist with              paper (IN-1k, 100 ep)
#   byol                generation_weight=0 (BYOL's update exactly;     66.8 linear, no images
#                       the decoder learns on frozen BYOL features)
#   pixel_mse           only the pixel term of L_G, no evaluator        67.2 linear, 40.5 percept.
#   random_evaluator    evaluator.checkpoint=random                     67.3 / 42.6
#   trained_evaluator   evaluator = the stage-1 BYOL run below          71.9 / 52.3 (R-50)
#
# Stage 1 trains the evaluator, configs/byol.py:fashion_mnist (same network, seed, data and
# steps as the rows). Every row then gets 20-NN (and 200-NN) top-1, linear top-1 (MoCo
# protocol) and the perceptual test: test-split reconstructions classified by one supervised
# classifier shared by all rows (trained once, cached in WORKROOT/classifier).
#
#   bash benchmarks/sage_table7.sh [WORKROOT] [--config.FIELD=VALUE ...]
#
# Environment: TOTAL_STEPS (default 0 = the presets' 3 epochs), LINEAR_EPOCHS (default: the
# protocol's 100), CLASSIFIER_EPOCHS (5), PERCEPTUAL_FLAGS (extra flags, e.g. a smaller
# --split for a quick check), FIGURE (where the reconstructions figure goes; default
# docs/images/sage_reconstructions.png). A workdir that already holds a finished run is only
# re-evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/sage_table7}
shift $(( $# >= 1 ? 1 : 0 ))
steps=${TOTAL_STEPS:-0}
linear_epochs=${LINEAR_EPOCHS:-}
classifier_epochs=${CLASSIFIER_EPOCHS:-5}
perceptual_flags=${PERCEPTUAL_FLAGS:-}
figure=${FIGURE:-docs/images/sage_reconstructions.png}
config=configs/sage.py:fashion_mnist
evaluator=$root/byol_evaluator

names=(byol pixel_mse random_evaluator trained_evaluator)
flags=(
  "--config.generation_weight=0 --config.evaluator.checkpoint=$evaluator"
  "--config.generation.projection=0 --config.generation.layer4=0 --config.generation.layer3=0 --config.generation.layer2=0"
  "--config.evaluator.checkpoint=random"
  "--config.evaluator.checkpoint=$evaluator"
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
python -c "import jax; print('jax', jax.__version__, jax.devices())"
echo "config: $config total_steps=$steps $*"
mkdir -p "$root"

train() {  # name, config, flags...
  local name=$1 cfg=$2
  shift 2
  local start
  start=$(date +%s)
  python main.py --config="$cfg" --workdir="$root/$name" --config.total_steps="$steps" "$@" 2>&1 \
    | grep -v "oneDNN\|InitializeLog" | tee "$root/$name.train.log"
  echo "$(( $(date +%s) - start ))" > "$root/$name.seconds"
}

evaluate() {  # name
  local name=$1
  python -m ssljax.eval knn --workdir="$root/$name" 2>/dev/null | tail -n 1 > "$root/$name.knn.json"
  python -m ssljax.eval linear --workdir="$root/$name" ${linear_epochs:+--epochs=$linear_epochs} \
    2>/dev/null | tail -n 1 > "$root/$name.linear.json"
}

train byol_evaluator configs/byol.py:fashion_mnist "$@"
evaluate byol_evaluator
for i in "${!names[@]}"; do
  name=${names[$i]}
  # shellcheck disable=SC2086
  train "$name" "$config" ${flags[$i]} "$@"
  evaluate "$name"
  # shellcheck disable=SC2086
  python -m ssljax.eval perceptual --workdir="$root/$name" --classifier-dir="$root/classifier" \
    --classifier-epochs="$classifier_epochs" $perceptual_flags 2>/dev/null | tail -n 1 \
    > "$root/$name.perceptual.json"
done
python -m ssljax.eval knn --workdir="$evaluator" --random-init 2>/dev/null | tail -n 1 \
  > "$root/random_init.knn.json"

python - "$root" byol_evaluator "${names[@]}" <<'EOF'
import json, re, sys
from pathlib import Path

root, names = Path(sys.argv[1]), sys.argv[2:]
def load(name, kind):
    path = root / f"{name}.{kind}.json"
    return json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}

print(f"\n{'row':<19} {'20-NN':>7} {'200-NN':>7} {'linear':>7} {'percept.':>9} {'(orig.)':>8} "
      f"{'MSE':>7} {'img/s':>7} {'wall s':>7}")
for name in names + ["random_init"]:
    knn, linear, perc = load(name, "knn"), load(name, "linear"), load(name, "perceptual")
    log = root / f"{name}.train.log"
    rate = re.findall(r"([\d.]+) images/s after compilation", log.read_text()) if log.exists() else []
    seconds = root / f"{name}.seconds"
    def pct(d, k):
        return f"{100 * d[k]:.2f}" if k in d else "-"
    print(f"{name:<19} {pct(knn, 'top1_k20'):>7} {pct(knn, 'top1_k200'):>7} {pct(linear, 'top1'):>7} "
          f"{pct(perc, 'reconstruction'):>9} {pct(perc, 'original'):>8} "
          f"{perc.get('reconstruction_mse', float('nan')):>7.4f} {rate[-1] if rate else '-':>7} "
          f"{seconds.read_text().strip() if seconds.exists() else '-':>7}")
classifier = load("trained_evaluator", "perceptual").get("classifier", {})
print(f"\nperceptual: top-1 of a supervised {classifier.get('model')} classifier "
      f"({classifier.get('epochs')} epochs on {classifier.get('train_split')}) on the "
      "reconstructions of the test split; (orig.) the same classifier on the originals.")
EOF
python scripts/sage_reconstructions_figure.py --root="$root" --out="$figure"
