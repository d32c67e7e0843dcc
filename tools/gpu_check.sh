#!/usr/bin/env bash
# The GPU path in one script, for a machine with an NVIDIA GPU and CUDA torch (no TensorRT and no
# package registry needed): full-width presets at their published shapes, dense vs block 1.0 /
# block 0.5 / attention 0.5 / head 0.5 / frame 0.5, torch (and AOTInductor) backends, then the
# `gpu`-marked tests, then one table.
# Time: measured on an H100 (torch 2.11), loading arch-latte took 28 s, finding its units 5 s, and each
# plan 26-42 s (capture, passes and the interleaved timing at REPEAT=10); no AOTInductor package
# finished within ~100 s on a cold machine, so give AOTI_CASE its own call of 5+ minutes; the default run (three
# presets × five plans, one AOTInductor package, the tests) takes well over 10 minutes. Within a short
# lease run one preset and fewer plans, e.g. CASES="builtin:arch-latte:16x256x256"
# PLANS="block-1.0 block-0.5" SKIP_TESTS=1, and the tests in a separate call.
#
# usage: tools/gpu_check.sh [OUT_DIR]
#   PRECISION=fp16  REPEAT=20  PYTHON=python3  SKIP_TESTS=1 (skip pytest)
#   CASES: "MODEL:SHAPE" pairs (default: the three presets at their published sizes)
#   PLANS: the plans timed on each (default: block-1.0 block-0.5 attention-0.5 head-0.5 frame-0.5)
#   AOTI_CASE / AOTI_PLANS: the one model and plans also timed as AOTInductor packages (each
#   package is a full inductor compile; full-width compiles take minutes, so few are timed)
#   FULL_CASES / FULL_PLANS / FULL_PRECISION: full 3-D attention presets, dense vs frame-window plans
#   (default arch-wan2.1-1.3b at 81x480x832, bf16: every head at W=0, at W=1, half the heads at W=0);
#   FULL_CASES="" skips them
#   SCALE=1: only the deployment-scale section, in a call of its own (sized for 10 minutes):
#   tools/scale_check.py builds SCALE_MODEL (default builtin:arch-wan2.1-14b, full width) in bf16 and
#   runs calibrate (one prompt, two steps, query fraction 0.1), a two-stage window plan, a verified
#   AOTInductor export and generate (two steps) at SCALE_SHAPE (default 81x720x1280), printing each
#   verb's torch.cuda.max_memory_allocated beside `inspect --memory`'s prediction
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
PRECISION=${PRECISION:-fp16}
REPEAT=${REPEAT:-20}
PYTHON=${PYTHON:-python3}
CASES=${CASES:-"builtin:arch-latte:16x256x256 builtin:arch-modelscope:16x256x256 builtin:arch-animatediff:16x512x512"}
AOTI_CASE=${AOTI_CASE:-"builtin:arch-latte:16x256x256"}
AOTI_PLANS=${AOTI_PLANS:-"block-0.5"}
PLANS=${PLANS:-"block-1.0 block-0.5 attention-0.5 head-0.5 frame-0.5"}
FULL_CASES=${FULL_CASES-"builtin:arch-wan2.1-1.3b:81x480x832"}
FULL_PLANS=${FULL_PLANS:-"window0-1.0 window1-1.0 window0-0.5"}
FULL_PRECISION=${FULL_PRECISION:-bf16}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  || { echo "error: no NVIDIA GPU visible (nvidia-smi failed)" >&2; exit 2; }
# install nothing when everything imports; otherwise say what is missing and stop
missing=$("$PYTHON" - <<'PYEOF'
import importlib
need = ["torch", "diffusers", "transformers", "safetensors", "numpy", "onnx", "onnxscript", "onnxruntime", "polygraphy", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "error: missing Python packages: $missing (install them, e.g. pip install --no-index --find-links WHEELS $missing)" >&2
  exit 2
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "error: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no CUDA device" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# inductor probes the host CPU's vector ISA by building and loading test libraries, which took over
# 115 s on an H100 host; trusting torch's own CPU detection skips it (set 0 or unset to probe)
export TORCHINDUCTOR_VEC_ISA_OK=${TORCHINDUCTOR_VEC_ISA_OK:-1}
"$PYTHON" -c "import torch, diffusers, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'python', platform.python_version(), '|', torch.cuda.get_device_name())" | tee "$OUT.versions.txt"

rm -rf "$OUT"; mkdir -p "$OUT"
if [ "${SCALE:-0}" = "1" ]; then
  "$PYTHON" tools/scale_check.py --model "${SCALE_MODEL:-builtin:arch-wan2.1-14b}" --shape "${SCALE_SHAPE:-81x720x1280}" \
    --precision bf16 --device cuda --target aoti --json "$OUT/scale.json" 2>&1 | tee "$OUT/scale.log"
  exit "${PIPESTATUS[0]}"
fi
status=0
for case in $CASES; do
  model=${case%:*}; shape=${case##*:}
  tag=$(echo "$model-$shape" | tr -c 'A-Za-z0-9\n' '_')
  backends="torch"
  plans_aoti=()
  if [ "$case" = "$AOTI_CASE" ]; then backends="torch aoti"; plans_aoti=(--aoti-plans $AOTI_PLANS); fi
  "$PYTHON" tools/device_bench.py "$model" --shape "$shape" --device cuda --precision "$PRECISION" \
    --repeat "$REPEAT" --plans $PLANS --backends $backends "${plans_aoti[@]}" --json "$OUT/$tag.json" 2>&1 | tee "$OUT/$tag.log" || status=1
done
for case in $FULL_CASES; do  # full 3-D attention: SDPA's fused kernels on the dense and the windowed programs
  model=${case%:*}; shape=${case##*:}
  tag=$(echo "$model-$shape" | tr -c 'A-Za-z0-9\n' '_')
  "$PYTHON" tools/device_bench.py "$model" --shape "$shape" --device cuda --precision "$FULL_PRECISION" \
    --repeat "$REPEAT" --plans $FULL_PLANS --backends torch --json "$OUT/$tag.json" 2>&1 | tee "$OUT/$tag.log" || status=1
done
if [ -z "${SKIP_TESTS:-}" ]; then
  "$PYTHON" -m pytest -q -m gpu tests 2>&1 | tail -15 | tee "$OUT/pytest.log" || status=1
fi
echo
echo "GPU check ($PRECISION, medians of $REPEAT interleaved calls, CUDA events):"
"$PYTHON" tools/bench_table.py "$OUT"/*.json | tee "$OUT/summary.md"
mv "$OUT.versions.txt" "$OUT/versions.txt"
exit $status
