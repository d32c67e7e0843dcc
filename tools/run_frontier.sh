#!/usr/bin/env bash
# Quality vs speed for every kind of plan on the trained reference models, all evaluated on the 60
# held-out prompts, SAMPLES seeds each, 20 steps, guidance 5 (calibration: examples/shapes-calibration.txt).
#
# Temporal-attention models (ref-unet3d, ref-latte): criterion plans (block / head, ratio 0.5, 1 stage),
#   a ratio per stage (block 0,0.5,1 over 3 stages), a speed budget (--target-speedup over 3 stages,
#   block granularity), temporal reuse (the blocks whose residual changes least, every 2nd step: half
#   of them and all of them) and searched plans (--search with --max-error, and with --target-speedup).
# Full 3-D attention (ref-wan): every head at W = 0, 1, 2; window plans by --ratio and --keep-mass at
#   1 and 3 stages (--ratio at W = 0 and 1, --keep-mass at W = 1); every block reused at K = 2 and 4; windows + reuse; searched window plans
#   (--search --actions window under --max-error and under --target-speedup), each beside the
#   criterion plan of the same FLOP-predicted speedup (--target-speedup with --window 0, the same
#   ranking as --ratio); tools/window_frontier.py then prints the table with the attention core
#   removed and the speedup carried over to arch-wan2.1-1.3b at 480x832x81.
# usage: tools/run_frontier.sh [OUT_DIR]   (MODELS="ref-unet3d ref-latte ref-wan", TARGET=1.3, MAX_ERROR=0.05,
#        SEARCH=0 skips the searched plans, the slow part on a CPU; ref-wan: WAN_TARGET=1.08,
#        WAN_MAX_ERROR=0.05, MASS=0.5 (--window 1 --keep-mass); a dry run: STEPS=4 EVAL_ARGS="--limit 5 --repeat 1")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-frontier-results}
F3=${F3:-.venv/bin/f3compile}
MODELS=${MODELS:-"ref-unet3d ref-latte ref-wan"}
SAMPLES=${SAMPLES:-2}
TARGET=${TARGET:-1.3}
MAX_ERROR=${MAX_ERROR:-0.05}
SEARCH=${SEARCH:-1}
WAN_TARGET=${WAN_TARGET:-1.08}
WAN_MAX_ERROR=${WAN_MAX_ERROR:-0.05}
MASS=${MASS:-0.5}
PROMPTS=examples/shapes-calibration.txt
PYTHON=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-20}
EVAL_ARGS=${EVAL_ARGS:-}

# the predicted speedup a plan file records (a searched plan's, or a budget's)
predicted() { "$PYTHON" -c "import json,sys; p=json.load(open(sys.argv[1])); print((p.get('search') or p['budget'])['predicted_speedup'])" "$1"; }

window_frontier() {  # full 3-D attention: per-head frame windows, reuse, both, searched
    local d=$1 plan=() w
    window() { $F3 plan "$d/calib" --granularity window "$@"; }
    for w in 0 1 2; do window --window $w --ratio 1 -o "$d/all-w$w.json"; plan+=("$d/all-w$w.json"); done
    window --window 0 --ratio 0.5 -o "$d/w0-ratio-0.5.json"
    window --window 0 --ratio 0.5 --stages 3 -o "$d/w0-ratio-0.5-s3.json"
    window --window 1 --keep-mass "$MASS" -o "$d/w1-mass-$MASS.json"
    window --window 1 --keep-mass "$MASS" --stages 3 -o "$d/w1-mass-$MASS-s3.json"
    window --window 1 --ratio 0.5 --stages 3 -o "$d/w1-ratio-0.5-s3.json"
    plan+=("$d/w0-ratio-0.5.json" "$d/w0-ratio-0.5-s3.json" "$d/w1-mass-$MASS.json" "$d/w1-mass-$MASS-s3.json"
           "$d/w1-ratio-0.5-s3.json")
    for k in 2 4; do window --window 0 --ratio 0 --reuse $k -o "$d/reuse-k$k.json"; plan+=("$d/reuse-k$k.json"); done
    window --window 1 --ratio 1 --reuse 2 -o "$d/all-w1-reuse-k2.json"
    window --window 0 --ratio 0.5 --reuse 2 -o "$d/w0-ratio-0.5-reuse-k2.json"
    window --window 2 --ratio 1 --reuse 4 -o "$d/all-w2-reuse-k4.json"
    plan+=("$d/all-w1-reuse-k2.json" "$d/w0-ratio-0.5-reuse-k2.json" "$d/all-w2-reuse-k4.json")
    if [ "$SEARCH" != 0 ]; then
        $F3 plan "$d/calib" --search --prompts "$PROMPTS" --actions window --windows 0,1,2 --max-error "$WAN_MAX_ERROR" \
            --stages 2 -o "$d/search-err-$WAN_MAX_ERROR.json" > "$d/search-err.log"
        $F3 plan "$d/calib" --search --prompts "$PROMPTS" --actions window --windows 0,1,2 --target-speedup "$WAN_TARGET" \
            --stages 2 -o "$d/search-speed-$WAN_TARGET.json" > "$d/search-speed.log"
        plan+=("$d/search-err-$WAN_MAX_ERROR.json" "$d/search-speed-$WAN_TARGET.json")
        for searched in err-$WAN_MAX_ERROR speed-$WAN_TARGET; do  # the criterion plan of the same predicted speedup
            window --window 0 --target-speedup "$(predicted "$d/search-$searched.json")" --stages 2 \
                -o "$d/matched-$searched.json"
            plan+=("$d/matched-$searched.json")
        done
    fi
    # shellcheck disable=SC2086
    $F3 eval "builtin:$model" --plan "${plan[@]}" --samples "$SAMPLES" --steps "$STEPS" --plot $EVAL_ARGS -o "$d/eval"
    "$PYTHON" tools/window_frontier.py "$d/eval/eval.json" --json "$d/frontier.json" | tee "$d/frontier.md"
}

for model in $MODELS; do
    d="$OUT/$model"
    mkdir -p "$d"
    [ -f "$d/calib/calibration.json" ] || $F3 calibrate "builtin:$model" --prompts "$PROMPTS" --steps "$STEPS" \
        --guidance-scale 5 --no-heatmaps -o "$d/calib"  # a rerun keeps the calibration it made
    if [ "$model" = ref-wan ]; then window_frontier "$d"; continue; fi
    $F3 plan "$d/calib" --ratio 0.5 --granularity block -o "$d/block-0.5.json"
    $F3 plan "$d/calib" --ratio 0.5 --granularity head -o "$d/head-0.5.json"
    $F3 plan "$d/calib" --ratio 0,0.5,1 --stages 3 --granularity block -o "$d/schedule-0-0.5-1.json"
    $F3 plan "$d/calib" --target-speedup "$TARGET" --stages 3 --granularity block -o "$d/budget-$TARGET.json"
    $F3 plan "$d/calib" --ratio 0.5 --granularity block --reuse 2 -o "$d/reuse-0.5-k2.json"
    $F3 plan "$d/calib" --ratio 1 --granularity block --reuse 2 -o "$d/reuse-1-k2.json"
    searched=()
    if [ "$SEARCH" != 0 ]; then
        $F3 plan "$d/calib" --search --prompts "$PROMPTS" --max-error "$MAX_ERROR" --stages 2 \
            -o "$d/search-err-$MAX_ERROR.json" > "$d/search-err.log"
        $F3 plan "$d/calib" --search --prompts "$PROMPTS" --target-speedup "$TARGET" --stages 2 \
            -o "$d/search-speed-$TARGET.json" > "$d/search-speed.log"
        searched=("$d/search-err-$MAX_ERROR.json" "$d/search-speed-$TARGET.json")
    fi
    $F3 eval "builtin:$model" --plan "$d"/block-0.5.json "$d"/head-0.5.json "$d"/schedule-0-0.5-1.json \
        "$d/budget-$TARGET.json" "$d"/reuse-0.5-k2.json "$d"/reuse-1-k2.json ${searched[@]+"${searched[@]}"} \
        --samples "$SAMPLES" --steps "$STEPS" --plot $EVAL_ARGS -o "$d/eval"  # shellcheck disable=SC2086
done
