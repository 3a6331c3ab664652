#!/bin/sh
# The input pipeline alone for each kind of views at 224 px: two views (BYOL), multi-crop
# (SSLight's 2x224 + 6x128 recipe), DetCon's two views with FH masks from the cache and
# computed in tf.data. One JSON line each from `python -m ssljax.bench pipeline`.
# Usage, from the repository root: sh benchmarks/pipeline_table.sh [BATCH] [BATCHES]
BATCH=${1:-32}
BATCHES=${2:-4}
for config in byol.py simclr.py sslight_dino.py:recipe detcon_b.py; do
  uptime
  nice python -m ssljax.bench pipeline --config=configs/$config --batch-size "$BATCH" \
    --batches "$BATCHES" --images 64 2>&1 | grep '^{' || echo "{\"failed\": \"$config\"}"
done
