#!/usr/bin/env bash
# Reproduces docs/BENCHMARKS.md on a CPU: architecture presets at width scale 0.25,
# 16 frames at 128x128, block plans at ratios 0.5 and 1.0 and a head plan at 0.5,
# torch and onnxruntime backends, dense vs pruned interleaved (medians of 5 after 2 warm-ups).
set -euo pipefail
cd "$(dirname "$0")/.."
F3=${F3:-.venv/bin/f3compile}
OUT=${OUT:-docs/bench}
SHAPE=${SHAPE:-16x128x128}
REPEAT=${REPEAT:-5}
mkdir -p "$OUT" && work=$(mktemp -d)
for preset in modelscope latte; do
  model="builtin:arch-$preset,width-scale=0.25"
  "$F3" calibrate "$model" --prompts examples/prompts.txt --steps 4 --frames 16 --height 128 --width 128 \
      --no-heatmaps -o "$work/$preset-calib"
  "$F3" bench "$model" --calibration "$work/$preset-calib" --sweep 0.5,1.0 --granularity block \
      --backend torch onnxruntime --shape "$SHAPE" --repeat "$REPEAT" \
      --json "$OUT/$preset-block.json" --plot "$OUT/$preset-block.png"
  "$F3" bench "$model" --calibration "$work/$preset-calib" --sweep 0.5 --granularity head \
      --backend torch onnxruntime --shape "$SHAPE" --repeat "$REPEAT" --json "$OUT/$preset-head.json"
done
rm -rf "$work"
