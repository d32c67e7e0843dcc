#!/usr/bin/env bash
# Wall time of `bench` and `eval` on one model with two checkouts of f3compile, interleaved
# (old, new, old, new), with the same interpreter, calibration and plan.
# usage: tools/time_checkouts.sh OLD_CHECKOUT NEW_CHECKOUT [OUT_DIR]
#        (MODEL=builtin:ref-unet3d, REPEATS=2, PYTHON=.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1"); NEW=$(realpath "$2"); OUT=$(realpath -m "${3:-time-checkouts}"); ROOT=$PWD
MODEL=${MODEL:-builtin:ref-unet3d}
REPEATS=${REPEATS:-2}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}  # not resolved: a venv's python is a link
for checkout in "$OLD" "$NEW"; do
    [ -f "$checkout/f3compile/cli.py" ] || { echo "error: $checkout is not an f3compile checkout" >&2; exit 2; }
done
rm -rf "$OUT" && mkdir -p "$OUT"
# run from $OUT: `python -m` puts the working directory first on the path, and a checkout there
# would shadow the one on PYTHONPATH
f3() { local checkout=$1; shift; (cd "$OUT" && PYTHONPATH="$checkout" "$PYTHON" -m f3compile.cli "$@"); }
for checkout in "$OLD" "$NEW"; do
    used=$(cd "$OUT" && PYTHONPATH="$checkout" "$PYTHON" -c "import f3compile; print(f3compile.__file__)")
    [ "$used" = "$checkout/f3compile/__init__.py" ] || { echo "error: $checkout is shadowed by $used" >&2; exit 2; }
done
f3 "$NEW" calibrate "$MODEL" --prompts "$ROOT/examples/shapes-calibration.txt" --steps 20 --guidance-scale 5 --no-heatmaps \
    -o "$OUT/calib" > "$OUT/calibrate.log"
f3 "$NEW" plan "$OUT/calib" --ratio 1 --granularity block --reuse 2 -o "$OUT/plan.json" > "$OUT/plan.log"
timed() {  # verb side rep argv...: one line "verb side seconds"
    local verb=$1 side=$2 rep=$3; shift 3
    local checkout=$OLD; [ "$side" = new ] && checkout=$NEW
    local start end
    start=$(date +%s.%N)
    f3 "$checkout" "$@" > "$OUT/$verb-$side-$rep.log" 2>&1
    end=$(date +%s.%N)
    printf '%s %s %.1f\n' "$verb" "$side" "$(echo "$end - $start" | bc)" | tee -a "$OUT/times.txt"
}
for rep in $(seq "$REPEATS"); do
    for side in old new; do
        timed bench "$side" "$rep" bench "$MODEL" --plan "$OUT/plan.json" --backend torch onnxruntime --repeat 5 \
            --json "$OUT/bench-$side-$rep.json"
    done
done
for rep in $(seq "$REPEATS"); do
    for side in old new; do
        timed eval "$side" "$rep" eval "$MODEL" --plan "$OUT/plan.json" --limit 10 --samples 1 --repeat 3 \
            -o "$OUT/eval-$side-$rep"
    done
done
"$PYTHON" - "$OUT/times.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for verb in ("bench", "eval"):
    old = statistics.median(float(s) for v, side, s in rows if v == verb and side == "old")
    new = statistics.median(float(s) for v, side, s in rows if v == verb and side == "new")
    print(f"{verb}: old {old:.1f} s, new {new:.1f} s (median of each), {old / new:.2f}x")
PY
