#!/usr/bin/env bash
# Reproduce docs/QUALITY.md for the trained reference models:
#   calibrate on examples/shapes-calibration.txt (20 steps, guidance 5), then two evaluations on the
#   60 held-out prompts (every label combination, paraphrase wording), 20 steps, guidance 5:
#   criterion: dense, every temporal block dropped, and the default criterion's plans at ratio 0.5
#              for block / attention / head with 1 and 2 stages — SAMPLES seeds per prompt (default 2);
#   random:    the same granularities at ratio 0.5, 1 stage: the criterion's plan vs RANDOM random
#              plans of the same size (default 5) — RANDOM_SAMPLES seeds per prompt (default 1).
# The two evaluations can run side by side (PARALLEL=1, one thread each); their speedups then share
# the CPU, so quote `f3compile bench` on an idle machine for speed.
# usage: tools/run_eval.sh [OUT_DIR]    (MODELS="ref-unet3d ref-latte" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-results}
F3=${F3:-.venv/bin/f3compile}
MODELS=${MODELS:-"ref-unet3d ref-latte"}
SAMPLES=${SAMPLES:-2}
RANDOM_SAMPLES=${RANDOM_SAMPLES:-1}
RANDOM_PLANS=${RANDOM_PLANS:-5}
for model in $MODELS; do
    d="$OUT/$model"
    $F3 calibrate "builtin:$model" --prompts examples/shapes-calibration.txt --steps 20 --guidance-scale 5 \
        --no-heatmaps -o "$d/calib"
    $F3 plan "$d/calib" --ratio 1 --granularity block -o "$d/all-blocks-dropped.json"
    criterion=("$F3" eval "builtin:$model" --plan "$d/all-blocks-dropped.json" --calibration "$d/calib" --sweep
               --ratios 0.5 --granularities block,attention,head --stages 1,2 --samples "$SAMPLES" -o "$d/criterion")
    random=("$F3" eval "builtin:$model" --calibration "$d/calib" --sweep --ratios 0.5 --granularities block,attention,head
            --stages 1 --random "$RANDOM_PLANS" --samples "$RANDOM_SAMPLES" -o "$d/random")
    if [ -n "${PARALLEL:-}" ]; then
        OMP_NUM_THREADS=1 "${criterion[@]}" > "$d/criterion.log" 2>&1 &
        OMP_NUM_THREADS=1 "${random[@]}" > "$d/random.log" 2>&1
        wait
    else
        "${criterion[@]}"
        "${random[@]}"
    fi
done
