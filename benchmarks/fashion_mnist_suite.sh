#!/usr/bin/env bash
# Every method's `fashion_mnist` preset pre-trained for the same wall-time budget on this
# machine, each evaluated (weighted 20/200-NN, linear probe, their random-init networks; raw
# pixels once), then one results table with plots: docs/results.md.
#
#   bash benchmarks/fashion_mnist_suite.sh [ROOT] [--config.FIELD=VALUE ...]
#
# Environment:
#   BUDGET       seconds of training per method (default 900), enforced by
#                --config.max_train_seconds (setup and compilation included)
#   SCHEDULE     fit (default): a CALIBRATION-second trial run measures steps/s and the
#                fixed overhead, and total_steps is set so that the whole LR/EMA schedule
#                ends inside the budget; cap: keep the preset's epochs, the budget only
#                truncates (the schedule may not finish)
#   CALIBRATION  seconds of the trial run, compilation included (default 90)
#   METHODS      space-separated config names (default: byol simclr moco_v2 detcon_b
#                detcon_s m2_teacher, then sage and sslight_* if configs/ has them)
#   CURVE_POINTS checkpoints evaluated with k-NN per run, for the k-NN-vs-step plot (4)
#   SEMI         1: also fine-tune on 1% and 10% of the labels (default 0)
#   OUT          the report (default docs/results.md; its PNGs go to docs/images/results/)
#
# A run whose directory holds `suite_wall_seconds` is finished: only re-evaluated
# (evaluations reuse the feature cache). SaGe's evaluator is the suite's BYOL run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/fashion_mnist_suite}
shift $(( $# >= 1 ? 1 : 0 ))
budget=${BUDGET:-900}
schedule=${SCHEDULE:-fit}
calibration=${CALIBRATION:-90}
curve_points=${CURVE_POINTS:-4}
out=${OUT:-docs/results.md}
if [[ -z "${METHODS:-}" ]]; then
  METHODS="byol simclr moco_v2 detcon_b detcon_s m2_teacher"
  for extra in configs/sage.py configs/sslight_*.py; do
    [[ -f "$extra" ]] && METHODS="$METHODS $(basename "$extra" .py)"
  done
fi
mkdir -p "$root"
quiet() { grep -Ev "oneDNN|InitializeLog|absl::|^[WI][0-9]{4} " || true; }

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "machine: $machine; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "methods: $METHODS; budget ${budget}s each ($schedule); root $root"

method_flags() {  # per-method flags beyond the preset
  case $1 in
    sage) echo "--config.evaluator.checkpoint=$root/byol" ;;
  esac
}

fit_steps() {  # $1 = trial workdir, $2 = its start (epoch seconds) -> "steps rate overhead"
  python - "$1" "$2" "$budget" <<'PY'
import json, sys, time
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
wall, budget = time.time() - float(sys.argv[2]), float(sys.argv[3])
if len(rows) < 2:
    sys.exit(f"the {sys.argv[1]} trial logged {len(rows)} row(s) in its time; raise CALIBRATION")
first, last = rows[0], rows[-1]  # compilation happened before the first row
rate = (last["step"] - first["step"]) / (last["elapsed_sec"] - first["elapsed_sec"])
overhead = wall - last["step"] / rate  # start-up, compilation, checkpointing
steps = int(0.97 * rate * (budget - overhead))
if steps <= 0:
    sys.exit(f"{rate:.2f} steps/s and {overhead:.0f} s overhead leave no steps in {budget:.0f} s")
print(f"{steps} {rate:.3f} {overhead:.1f}")
PY
}

evaluate() {  # $1 = log name, then `python -m ssljax.eval` arguments; prints its JSON line
  local log=$root/$1.eval.log
  shift
  if ! python -m ssljax.eval "$@" 2>>"$log" > "$root/.eval_out"; then
    echo "error: python -m ssljax.eval $* failed; see $log" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  tail -n 1 "$root/.eval_out"
}

runs=()
for name in $METHODS; do
  config=configs/$name.py:fashion_mnist
  workdir=$root/$name
  if ! python -c "from ssljax import configlib; configlib.load('$config')" 2>/dev/null; then
    echo "== $name: no fashion_mnist preset, skipped"
    continue
  fi
  runs+=("$workdir")
  if [[ ! -f "$workdir/suite_wall_seconds" ]]; then
    rm -rf "$workdir"
    flags=(--config.max_train_seconds="$budget" $(method_flags "$name"))
    if [[ $schedule == fit ]]; then
      trial=$root/.calibrate_$name
      fit=""
      for seconds in "$calibration" $((2 * calibration)) $((4 * calibration)); do
        rm -rf "$trial"
        start=$(date +%s.%N)
        python main.py --config="$config" --workdir="$trial" "${flags[@]}" \
          --config.max_train_seconds="$seconds" --config.total_steps=1000000 \
          --config.log_every_steps=2 --config.checkpoint_every_steps=1000000 "$@" 2>&1 \
          | quiet | tail -n 1
        fit=$(fit_steps "$trial" "$start") && break  # too few steps logged: a longer trial
      done
      [[ -n "$fit" ]] || exit 1
      read -r steps rate overhead <<< "$fit"
      rm -rf "$trial"
      echo "== $name: $rate steps/s, ${overhead}s overhead -> total_steps=$steps"
      flags+=(--config.total_steps="$steps")
    else
      steps=$(python -c "
from ssljax import configlib, train
print(train.setup(configlib.load('$config')).total_steps)" 2>/dev/null)
    fi
    # Rounded up, so that the last periodic checkpoint is not a few steps before the final one.
    every=$(( (steps + curve_points - 1) / curve_points ))
    flags+=(--config.checkpoint_every_steps="$every" --config.keep_checkpoints=$((curve_points + 1)))
    echo "== $name: training $config for at most ${budget}s"
    start=$(date +%s)
    python main.py --config="$config" --workdir="$workdir" "${flags[@]}" "$@" 2>&1 | quiet \
      | tee "$root/$name.train.log" | { grep -v "^step " || true; }
    tail -n 1 "$root/$name.train.log"
    echo "$(( $(date +%s) - start ))" > "$workdir/suite_wall_seconds"
  fi
  echo "== $name: evaluating (progress and errors in $root/$name.eval.log)"
  for step in $(ls "$workdir/checkpoints" | grep -E '^[0-9]+$' | sort -n | head -n -1); do
    evaluate "$name" knn --workdir="$workdir" --checkpoint="$step"
  done
  evaluate "$name" knn --workdir="$workdir"
  evaluate "$name" knn --workdir="$workdir" --random-init
  evaluate "$name" linear --workdir="$workdir"
  evaluate "$name" linear --workdir="$workdir" --random-init
  if [[ ${SEMI:-0} == 1 ]]; then
    for fraction in 0.01 0.1; do
      evaluate "$name" semi --workdir="$workdir" --fraction=$fraction
    done
  fi
done

if (( ${#runs[@]} == 0 )); then
  echo "no method to run" >&2
  exit 1
fi
echo "== baselines: raw pixels"
evaluate baselines knn --workdir="${runs[0]}" --raw-pixels
evaluate baselines linear --workdir="${runs[0]}" --raw-pixels

walls=$(for w in "${runs[@]}"; do echo -n "$(basename "$w") $(cat "$w/suite_wall_seconds") s, "; done)
command="BUDGET=$budget SCHEDULE=$schedule CALIBRATION=$calibration bash benchmarks/fashion_mnist_suite.sh $root${*:+ $*}"
python -m ssljax.report "${runs[@]}" --out="$out" \
  --note="Command: \`$command\` on $machine." \
  --note="Each method trained its \`fashion_mnist\` preset for at most ${budget} s from the start of training (\`--config.max_train_seconds\`; process start-up and imports come on top). With SCHEDULE=fit, \`total_steps\` was set from a trial run of at least ${calibration} s so that the whole LR and EMA schedule ends inside the budget. Training processes took ${walls%, }; the table's wall time is the logged time, compilation included." \
  --note="k-NN: \`python -m ssljax.eval knn\` (weighted, cosine, T = 0.07). Linear: \`python -m ssljax.eval linear\`, MoCo's protocol (SGD lr 30, 100 epochs, ×0.1 at 60% and 80%) on frozen centre-view features. Random init: the same config and seed, untrained (\`--random-init\`). Raw pixels: the flattened 32×32×3 evaluation images (\`--raw-pixels\`)." \
  | quiet
