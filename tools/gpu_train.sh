#!/usr/bin/env bash
# Train reference models side by side on one NVIDIA GPU for a fixed time, from their shipped
# weights (`--init`), with the text encoder carried when its package cannot be installed.
#
# usage: tools/gpu_train.sh [OUT_DIR]        (default runs/gpu-train)
#   MODELS="ref-unet3d ref-latte"   which to train (all at once); ref-wan too
#   BUDGET=240          seconds of training per model (all run at once; the schedule's --steps N is
#                       chosen from the measured step rate and recorded with the weights)
#   TEXT_ENCODER=DIR    a MiniLM packed by `tools/carry_text_encoder.py pack DIR`, rebuilt here first
#   UNET_ARGS / LATTE_ARGS / WAN_ARGS   the recipe of each model (defaults below)
#   PYTHON=python3
#   DEVICE=cpu EXTRA="--clips 300 --eval-prompts 5"   a short dry run of the whole script on the CPU
# Each model writes OUT_DIR/NAME/{NAME.safetensors, NAME.json, NAME-train.log, NAME-loss.png} and
# OUT_DIR/NAME.out (its console). Install the weights with
#   cp OUT_DIR/NAME/NAME.safetensors OUT_DIR/NAME/NAME.json f3compile/models/reference/weights/
#   cp OUT_DIR/NAME/NAME-train.log OUT_DIR/NAME/NAME-loss.png docs/reference/
# and check first that the model uses the direction words of its captions at all (half a minute):
#   python tools/direction_drift.py --model NAME OUT_DIR/NAME/NAME.safetensors
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-train}
BUDGET=${BUDGET:-240}
PYTHON=${PYTHON:-python3}
WEIGHTS=f3compile/models/reference/weights
UNET_ARGS=${UNET_ARGS:-"--init $WEIGHTS/ref-unet3d.safetensors --batch 128 --lr 5e-4 --warmup 200 --high-noise-share 0.5"}
LATTE_ARGS=${LATTE_ARGS:-"--init $WEIGHTS/ref-latte.safetensors --batch 128 --lr 6e-4 --warmup 200 --high-noise-share 0.5"}
WAN_ARGS=${WAN_ARGS:-"--init $WEIGHTS/ref-wan.safetensors --batch 128 --lr 5e-4 --warmup 200 --high-noise-share 0.5"}
MODELS=${MODELS:-"ref-unet3d ref-latte"}

for name in $MODELS; do
  case $name in ref-unet3d|ref-latte|ref-wan) ;; *) echo "error: MODELS lists $name; choose among ref-unet3d ref-latte ref-wan" >&2; exit 2 ;; esac
done
DEVICE=${DEVICE:-cuda}
[ "$DEVICE" = cpu ] || "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "error: torch sees no CUDA device; train on the CPU with tools/train_reference.py --device cpu" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${TEXT_ENCODER:-}" ]; then
  site=$(mktemp -d)
  "$PYTHON" tools/carry_text_encoder.py unpack "$TEXT_ENCODER" "$site" || exit 2
  export PYTHONPATH="$site:$PYTHONPATH"
fi
mkdir -p "$OUT"
status=0
pids=()
for name in $MODELS; do
  case $name in
    ref-unet3d) recipe=$UNET_ARGS ;;
    ref-latte) recipe=$LATTE_ARGS ;;
    ref-wan) recipe=$WAN_ARGS ;;
  esac
  # the weights a run starts from are copied first: its --init must not be the file it replaces
  if [ -f "$WEIGHTS/$name.safetensors" ]; then
    cp "$WEIGHTS/$name.safetensors" "$OUT/init-$name.safetensors"
    recipe=${recipe//$WEIGHTS\/$name.safetensors/$OUT/init-$name.safetensors}
  fi
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 "$PYTHON" tools/train_reference.py "$name" --device "$DEVICE" --time-budget "$BUDGET" \
    --eval-every 500 --log-every 50 --checkpoint-every 1000 --threads 4 $recipe ${EXTRA:-} \
    --out "$OUT/$name" --work "$OUT/work-$name" --restart > "$OUT/$name.out" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in $MODELS; do echo "== $name"; tail -4 "$OUT/$name.out"; done
exit $status
