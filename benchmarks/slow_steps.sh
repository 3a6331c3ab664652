#!/bin/sh
# The slow steps against their parents at the same network and batch (the
# fashion_mnist presets' ResNet-18 x1/8 at 32 px; Momentum² Teacher at BYOL's width and
# batch), back to back, one JSON line each from `python -m ssljax.bench step`, `uptime`
# before each pair.
# Usage, from the repository root: sh benchmarks/slow_steps.sh [BATCH] [STEPS] [BEFORE]
# BEFORE: optionally a checkout of an earlier commit whose method steps run right after
# this tree's (before/after pairs), e.g. `git worktree add /tmp/before <commit>`.
STEPS=${2:-5}
BATCH=${1:-64}
BEFORE=${3:-}
bench() { nice python -m ssljax.bench step --steps "$STEPS" --batch-size "$BATCH" "$@" 2>&1 | grep '^{' || echo "{\"failed\": \"$*\"}"; }
before() { [ -n "$BEFORE" ] && (cd "$BEFORE" && PYTHONPATH=$PWD bench "$@" | sed 's/^{/{"tree": "before", /'); true; }
pair() {
  uptime
  bench --config=configs/$1.py:fashion_mnist
  bench --config=configs/$2.py:fashion_mnist $3
  before --config=configs/$2.py:fashion_mnist $3
}
pair simclr detcon_s
pair byol detcon_b
pair byol sage
pair byol m2_teacher "--config.model.width=0.125"
uptime
