#!/usr/bin/env bash
# The whole GPU path in one script, on a machine with an NVIDIA GPU:
#   calibrate -> plan -> export --target trt (dense and pruned) -> verify -> time engines
# and the tests marked `gpu`. Prints one summary table at the end.
#
# usage: tools/gpu_check.sh [OUT_DIR]
#   MODELS="builtin:tiny-unet3d builtin:tiny-latte" PRECISION=fp16 RATIO=0.5 GRANULARITY=block
#   VENV=.venv-gpu (created with the CUDA build of torch and the [trt] extra unless it exists)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
MODELS=${MODELS:-"builtin:tiny-unet3d builtin:tiny-latte"}
PRECISION=${PRECISION:-fp16}
RATIO=${RATIO:-0.5}
GRANULARITY=${GRANULARITY:-block}
VENV=${VENV:-.venv-gpu}

nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader || { echo "error: no NVIDIA GPU visible" >&2; exit 2; }
if [ ! -x "$VENV/bin/f3compile" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch            # the CUDA build on a GPU machine
  "$VENV/bin/pip" install --quiet -e ".[trt,test]"
fi
PY="$VENV/bin/python"; F3="$VENV/bin/f3compile"
"$PY" -c "import torch, tensorrt; assert torch.cuda.is_available(); print('torch', torch.__version__, 'tensorrt', tensorrt.__version__, torch.cuda.get_device_name())"

rm -rf "$OUT"; mkdir -p "$OUT"
summary="$OUT/summary.txt"
printf '%-24s %-5s %9s %9s %8s\n' model stage dense_ms pruned_ms speedup > "$summary"
for model in $MODELS; do
  tag=$(echo "$model" | tr -c 'A-Za-z0-9\n' '_')
  d="$OUT/$tag"
  "$F3" calibrate "$model" --prompts examples/prompts.txt -o "$d/calib" --steps 20
  "$F3" plan "$d/calib" --ratio "$RATIO" --granularity "$GRANULARITY" --stages 2 -o "$d/plan.json"
  "$F3" export "$model" --target trt --precision "$PRECISION" -o "$d/dense"
  "$F3" export "$model" --plan "$d/plan.json" --target trt --precision "$PRECISION" -o "$d/pruned"
  "$PY" tools/trt_bench.py "$d/dense" "$d/pruned" --json "$d/bench.json"
  "$PY" - "$model" "$d/bench.json" >> "$summary" <<'PYEOF'
import json, sys
for row in json.load(open(sys.argv[2]))["results"]:
    print(f"{sys.argv[1]:<24} {row['stage']:<5} {row['dense_ms']:>9.3f} {row['pruned_ms']:>9.3f} {row['speedup']:>7.3f}x")
PYEOF
done
"$PY" -m pytest -q -m gpu tests
echo; echo "GPU check summary ($PRECISION, $GRANULARITY ratio $RATIO):"; cat "$summary"
