#!/usr/bin/env bash
# Quality vs measured speedup for every kind of plan on the trained reference models:
#   criterion plans (block / head, ratio 0.5, 1 stage), a ratio per stage (block 0,0.5,1 over 3 stages),
#   a speed budget (--target-speedup over 3 stages, block granularity), temporal reuse (the blocks whose
#   residual changes least, every 2nd step: half of them and all of them) and searched plans
#   (--search with --max-error, and with --target-speedup), all evaluated on the 60 held-out prompts,
#   SAMPLES seeds each, 20 steps, guidance 5 (calibration: examples/shapes-calibration.txt).
# usage: tools/run_frontier.sh [OUT_DIR]   (MODELS="ref-unet3d ref-latte", TARGET=1.3, MAX_ERROR=0.05,
#        SEARCH=0 skips the two searched plans, the slow part on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-frontier-results}
F3=${F3:-.venv/bin/f3compile}
MODELS=${MODELS:-"ref-unet3d ref-latte"}
SAMPLES=${SAMPLES:-2}
TARGET=${TARGET:-1.3}
MAX_ERROR=${MAX_ERROR:-0.05}
SEARCH=${SEARCH:-1}
for model in $MODELS; do
    d="$OUT/$model"
    mkdir -p "$d"
    $F3 calibrate "builtin:$model" --prompts examples/shapes-calibration.txt --steps 20 --guidance-scale 5 \
        --no-heatmaps -o "$d/calib"
    $F3 plan "$d/calib" --ratio 0.5 --granularity block -o "$d/block-0.5.json"
    $F3 plan "$d/calib" --ratio 0.5 --granularity head -o "$d/head-0.5.json"
    $F3 plan "$d/calib" --ratio 0,0.5,1 --stages 3 --granularity block -o "$d/schedule-0-0.5-1.json"
    $F3 plan "$d/calib" --target-speedup "$TARGET" --stages 3 --granularity block -o "$d/budget-$TARGET.json"
    $F3 plan "$d/calib" --ratio 0.5 --granularity block --reuse 2 -o "$d/reuse-0.5-k2.json"
    $F3 plan "$d/calib" --ratio 1 --granularity block --reuse 2 -o "$d/reuse-1-k2.json"
    searched=()
    if [ "$SEARCH" != 0 ]; then
        $F3 plan "$d/calib" --search --prompts examples/shapes-calibration.txt --max-error "$MAX_ERROR" --stages 2 \
            -o "$d/search-err-$MAX_ERROR.json" > "$d/search-err.log"
        $F3 plan "$d/calib" --search --prompts examples/shapes-calibration.txt --target-speedup "$TARGET" --stages 2 \
            -o "$d/search-speed-$TARGET.json" > "$d/search-speed.log"
        searched=("$d/search-err-$MAX_ERROR.json" "$d/search-speed-$TARGET.json")
    fi
    $F3 eval "builtin:$model" --plan "$d"/block-0.5.json "$d"/head-0.5.json "$d"/schedule-0-0.5-1.json \
        "$d/budget-$TARGET.json" "$d"/reuse-0.5-k2.json "$d"/reuse-1-k2.json ${searched[@]+"${searched[@]}"} \
        --samples "$SAMPLES" --plot -o "$d/eval"
done
