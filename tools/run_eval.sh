#!/usr/bin/env bash
# Reproduce docs/QUALITY.md: calibrate each trained reference model, then `f3compile eval`
#   controls: ratio 0.5, block and head, the default criterion vs output_norm vs 5 random plans;
#   sweep:    ratios x granularities (block, attention, head) x 1 and 2 stages.
# usage: tools/run_eval.sh [OUT_DIR]    (MODELS="ref-latte ref-unet3d" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-results}
F3=${F3:-.venv/bin/f3compile}
MODELS=${MODELS:-"ref-latte ref-unet3d"}
CONTROL_SAMPLES=${CONTROL_SAMPLES:-2}
SWEEP_RATIOS=${SWEEP_RATIOS:-0.25,0.5,0.75,1}
SWEEP_STAGES=${SWEEP_STAGES:-1,2}
for model in $MODELS; do
    $F3 calibrate "builtin:$model" --prompts examples/shapes-calibration.txt --steps 20 --guidance-scale 5 \
        --no-heatmaps -o "$OUT/$model/calib"
    $F3 eval "builtin:$model" --calibration "$OUT/$model/calib" --sweep --ratios 0.5 --granularities block,head \
        --stages 1 --criteria cross_frame_mass,output_norm --random 5 --samples "$CONTROL_SAMPLES" -o "$OUT/$model/controls"
    $F3 eval "builtin:$model" --calibration "$OUT/$model/calib" --sweep --ratios "$SWEEP_RATIOS" \
        --granularities block,attention,head --stages "$SWEEP_STAGES" --samples 1 -o "$OUT/$model/sweep"
done
