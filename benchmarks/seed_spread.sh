#!/usr/bin/env bash
# Seed spread of the comparisons the README states, on the `fashion_mnist` presets: every
# arm pre-trained with SEEDS seeds (default 3), 20-NN and 200-NN top-1 of each run, then
# mean ± std per arm and, per comparison, whether the difference of the means exceeds the
# seed spread (|Δ| > std_a + std_b, i.e. the two mean ± std intervals do not overlap; the
# Welch t and the mean ± std of the same-seed differences are printed beside it).
#
#   comparison                  arms
#   DetCon_B vs BYOL            byol, detcon_b (masks.sampling='independent', the
#                               reference), detcon_b_shared (masks.sampling='shared')
#   SSLight DINO                dino_recipe (:fashion_mnist), dino_baseline (:fashion_mnist_baseline)
#   M²T Table 1 rows            m2t_local_local, m2t_local_momentum, m2t_sync_sync (as
#                               benchmarks/m2t_table1.sh, BN groups of GROUP images,
#                               M2T_EPOCHS epochs)
#   SaGe vs BYOL                sage (its evaluator: the BYOL run of the same seed), byol
#
#   bash benchmarks/seed_spread.sh [ROOT] [--config.FIELD=VALUE ...]
#
# Environment:
#   SEEDS        seeds, space-separated (default "0 1 2"); `--config.seed` of each run
#   PRESET       fashion_mnist (default) or smoke (a seconds-long check of this script:
#                every arm on its method's `smoke` preset, the SSLight baseline as the
#                smoke preset with the baseline's scales and α)
#   TOTAL_STEPS  a step count for every run (default: unset, each preset's own schedule)
#   GROUP        the M²T arms' BN group size (16; 4 with PRESET=smoke)
#   M2T_EPOCHS   the M²T arms' epochs on the fashion_mnist preset (default 3, the length
#                of the single-run miniature in docs/benchmarks.md; the preset's own is 10)
#   ARMS         a subset of the arms above (default: all; sage needs byol)
#   OUT          the Markdown table (default ROOT/seed_spread.md)
#
# A run whose directory holds `seed_spread.knn.json` is finished and is not redone, so an
# interrupted script resumes where it stopped (each run's seed_spread.train.log keeps every
# attempt). Extra flags go to every training run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/seed_spread}
shift $(( $# >= 1 ? 1 : 0 ))
seeds=${SEEDS:-0 1 2}
preset=${PRESET:-fashion_mnist}
steps=${TOTAL_STEPS:-}
steps_flag=${steps:+--config.total_steps=$steps}
out=${OUT:-$root/seed_spread.md}
all_arms="byol detcon_b detcon_b_shared dino_recipe dino_baseline m2t_local_local m2t_local_momentum m2t_sync_sync sage"
arms=${ARMS:-$all_arms}
case $preset in
  fashion_mnist) group=${GROUP:-16}; dino_baseline=configs/sslight_dino.py:fashion_mnist_baseline
                 baseline_flags=""; m2t_epochs="--config.epochs=${M2T_EPOCHS:-3}" ;;
  smoke) group=${GROUP:-4}; dino_baseline=configs/sslight_dino.py:smoke
         # configs/sslight_dino.py's baseline view sampling on the smoke preset
         baseline_flags="--config.multicrop.global_min_scale=0.14 --config.multicrop.local_max_scale=0.14 --config.multicrop.alpha=0.14285714285714285"
         m2t_epochs="" ;;
  *) echo "error: PRESET=$preset; use fashion_mnist or smoke" >&2; exit 2 ;;
esac
mkdir -p "$root"
quiet() { grep -Ev "oneDNN|InitializeLog|absl::|^[WI][0-9]{4} " || true; }
failed() {  # $1 = log, $2 = what failed: the log's error line (else its last line), exit 2
  local why
  why=$(grep -m1 -E '^(error|[A-Za-z]*Error):' "$1" || grep -v '^$' "$1" | tail -n 1 || true)
  echo "error: $2 failed: ${why#error: } (full log: $1)" >&2
  exit 2
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
python -c "import jax; print('jax', jax.__version__, jax.devices())"
echo "preset: $preset; seeds: $seeds; total_steps: ${steps:-preset}; arms: $arms; root: $root"

arm_config() {  # $1 = arm -> the config spec
  case $1 in
    byol) echo "configs/byol.py:$preset" ;;
    detcon_b|detcon_b_shared) echo "configs/detcon_b.py:$preset" ;;
    dino_recipe) echo "configs/sslight_dino.py:$preset" ;;
    dino_baseline) echo "$dino_baseline" ;;
    m2t_*) echo "configs/m2_teacher.py:$preset" ;;
    sage) echo "configs/sage.py:$preset" ;;
    *) echo "error: unknown arm $1; use some of: $all_arms" >&2; exit 2 ;;
  esac
}

arm_flags() {  # $1 = arm, $2 = seed -> flags beyond the preset
  case $1 in
    detcon_b) echo "--config.masks.sampling=independent" ;;
    detcon_b_shared) echo "--config.masks.sampling=shared" ;;
    dino_baseline) echo "$baseline_flags" ;;
    m2t_local_local) echo "--config.student_bn_group=$group --config.teacher_bn=batch --config.teacher_bn_group=$group $m2t_epochs" ;;
    m2t_local_momentum) echo "--config.student_bn_group=$group --config.teacher_bn=momentum --config.teacher_bn_group=$group $m2t_epochs" ;;
    m2t_sync_sync) echo "--config.student_bn_group=sync --config.teacher_bn=batch --config.teacher_bn_group=sync $m2t_epochs" ;;
    sage) echo "--config.evaluator.checkpoint=$root/byol/seed$2" ;;
  esac
}

for seed in $seeds; do
  for arm in $arms; do
    workdir=$root/$arm/seed$seed
    [[ -f "$workdir/seed_spread.knn.json" ]] && { echo "done: $workdir"; continue; }
    if [[ $arm == sage && ! -f "$root/byol/seed$seed/seed_spread.knn.json" ]]; then
      echo "error: the sage arm needs the byol run of seed $seed first (ARMS order)" >&2
      exit 2
    fi
    config=$(arm_config "$arm")
    mkdir -p "$workdir"
    echo "== $arm seed $seed: $config $(arm_flags "$arm" "$seed") (load $(cut -d' ' -f1 /proc/loadavg))"
    start=$(date +%s)
    # Appended, so the log of an interrupted attempt is kept beside the resumed one.
    echo "== $(date -u +%FT%TZ): start (resumes from the newest checkpoint, if any)" \
      >> "$workdir/seed_spread.train.log"
    # shellcheck disable=SC2046
    if ! python main.py --config="$config" --workdir="$workdir" --config.seed="$seed" \
        $steps_flag $(arm_flags "$arm" "$seed") "$@" 2>&1 \
        | quiet >> "$workdir/seed_spread.train.log"; then
      failed "$workdir/seed_spread.train.log" "training $arm seed $seed"
    fi
    echo "$(( $(date +%s) - start ))" > "$workdir/seed_spread.seconds"
    if ! python -m ssljax.eval knn --workdir="$workdir" 2>>"$workdir/seed_spread.eval.log" \
        | tail -n 1 > "$workdir/seed_spread.knn.tmp"; then
      failed "$workdir/seed_spread.eval.log" "k-NN of $arm seed $seed"
    fi
    mv "$workdir/seed_spread.knn.tmp" "$workdir/seed_spread.knn.json"
    tail -n 1 "$workdir/seed_spread.knn.json"
  done
done

python - "$root" "$out" "$preset" "$arms" $seeds <<'EOF'
import json, math, statistics, sys
from pathlib import Path

root, out, preset, arms, seeds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5:]
COMPARISONS = [
    ("DetCon_B (independent sampling) vs BYOL", "detcon_b", "byol"),
    ("DetCon_B (shared sampling) vs BYOL", "detcon_b_shared", "byol"),
    ("DetCon_B independent vs shared sampling", "detcon_b", "detcon_b_shared"),
    ("SSLight DINO recipe vs baseline", "dino_recipe", "dino_baseline"),
    ("M²T local/momentum vs local/local", "m2t_local_momentum", "m2t_local_local"),
    ("M²T local/momentum vs sync/sync", "m2t_local_momentum", "m2t_sync_sync"),
    ("M²T sync/sync vs local/local", "m2t_sync_sync", "m2t_local_local"),
    ("SaGe (trained evaluator) vs BYOL", "sage", "byol"),
]


def by_seed(arm, key):
    values = {}
    for seed in seeds:
        path = root / arm / f"seed{seed}" / "seed_spread.knn.json"
        if path.exists():
            values[seed] = 100 * json.loads(path.read_text())[key]
    return values


def spread(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, std


lines = [f"Seed spread on the `{preset}` presets: {len(seeds)} seeds ({' '.join(seeds)}), "
         "k-NN top-1 (%) on the test split, mean ± sample std over seeds.", "",
         "| arm | seeds | 20-NN | 200-NN | per seed (20-NN) |", "|---|---|---|---|---|"]
for arm in arms:
    v20, v200 = list(by_seed(arm, "top1_k20").values()), list(by_seed(arm, "top1_k200").values())
    if not v20:
        continue
    (m20, s20), (m200, s200) = spread(v20), spread(v200)
    per_seed = ", ".join(f"{v:.2f}" for v in v20)
    lines.append(f"| {arm} | {len(v20)} | {m20:.2f} ± {s20:.2f} | {m200:.2f} ± {s200:.2f} | {per_seed} |")
# The arms of one seed share initialisation, data order and augmentation, so the same-seed
# difference (paired) also removes the part of the spread that moves every arm alike.
lines += ["", "| comparison | k | Δ mean | std a + std b | exceeds the spread | Welch t "
          "| same-seed Δ, mean ± std (seeds) |", "|---|---|---|---|---|---|---|"]
for label, a, b in COMPARISONS:
    for key, k in (("top1_k20", 20), ("top1_k200", 200)):
        pa, pb = by_seed(a, key), by_seed(b, key)
        va, vb = list(pa.values()), list(pb.values())
        if len(va) < 2 or len(vb) < 2:
            continue
        (ma, sa), (mb, sb) = spread(va), spread(vb)
        delta, band = ma - mb, sa + sb
        se = math.sqrt(sa**2 / len(va) + sb**2 / len(vb))
        t = delta / se if se > 0 else float("inf")
        paired = [pa[seed] - pb[seed] for seed in pa if seed in pb]
        paired_text = (f"{statistics.fmean(paired):+.2f} ± {statistics.stdev(paired):.2f} ({len(paired)})"
                       if len(paired) > 1 else "–")
        lines.append(f"| {label} ({len(va)} vs {len(vb)} seeds) | {k} | {delta:+.2f} | {band:.2f} | "
                     f"{'yes' if abs(delta) > band else 'no'} | {t:+.2f} | {paired_text} |")
text = "\n".join(lines) + "\n"
out.write_text(text)
print("\n" + text + f"\nwritten: {out}")
EOF
