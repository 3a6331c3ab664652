#!/bin/sh
# Every method's ImageNet preset network (`imagenet`; SSLight's default `recipe`,
# MobileNetV2 with 2 global and 6 local crops) at a small batch on this machine: one JSON
# line each from `python -m ssljax.bench step`, `uptime` before each.
# Usage, from the repository root: sh benchmarks/imagenet_step_table.sh [BATCH] [STEPS]
BATCH=${1:-8}
STEPS=${2:-2}
# MoCo's shuffle BN needs at least 3 BN groups on one device: groups of BATCH/4 images.
for spec in byol:imagenet simclr:imagenet \
    "moco_v1:imagenet --config.bn_group=$((BATCH / 4))" \
    "moco_v2:imagenet --config.bn_group=$((BATCH / 4))" \
    "sslight_mocov2:recipe --config.bn_group=$((BATCH / 4))" \
    detcon_s:imagenet detcon_b:imagenet sage:imagenet sslight_dino:recipe sslight_swav:recipe \
    "m2_teacher:imagenet --config.student_bn_group=$BATCH --config.teacher_bn_group=$BATCH"; do
  set -- $spec
  config=$1; shift
  uptime
  nice python -m ssljax.bench step --config=configs/${config%%:*}.py:${config#*:} \
    --batch-size "$BATCH" --steps "$STEPS" --warmup 1 "$@" 2>&1 | grep '^{' \
    || echo "{\"failed\": \"$config\"}"
done
