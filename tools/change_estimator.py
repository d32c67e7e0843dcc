#!/usr/bin/env python
"""The residual-change statistic kept as a sketch, against the exact statistic, per builtin.

    python tools/change_estimator.py [--models ref-wan ref-latte tiny-wan ...] [--steps 4] [--prompts 3]

Calibration's default keeps each block's previous-step residual as a random projection of its rows
(`--residual-change sketch`, 96 directions per row) instead of the whole residual (`exact`). For each
model this runs both calibrations on the same prompts and seeds and prints, over every block and
step that has a comparison, the largest and the mean relative difference of the per-step mean change
(what reuse plans rank by), the residual row length (rows no longer than 96 are kept exactly, so the
two agree to rounding), and the bytes each mode keeps per block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle standing still",
           "a yellow circle moving right"]


def compare(name: str, steps: int, prompts: int) -> dict:
    from f3compile.calibration.calibrate import CalibrationConfig, calibrate
    from f3compile.calibration.recorder import SKETCH_WIDTH, AttentionRecorder
    from f3compile.models import load_model

    model = load_model(f"builtin:{name}")
    runs, rows = {}, set()
    kept = AttentionRecorder._kept_rows

    def watched(self, residual, start):  # the row lengths the statistic saw
        rows.add(residual.shape[-1])
        return kept(self, residual, start)

    AttentionRecorder._kept_rows = watched
    try:
        for mode in ("exact", "sketch"):
            config = CalibrationConfig(steps=steps, heatmaps=False, seed=3, residual_change=mode)
            runs[mode] = calibrate(model, PROMPTS[:prompts], config)
    finally:
        AttentionRecorder._kept_rows = kept
    worst, total, count = 0.0, 0.0, 0
    for block in runs["exact"].blocks:
        for step in range(1, steps):
            exact = runs["exact"].residual_change(block.id, [step])
            sketch = runs["sketch"].residual_change(block.id, [step])
            error = abs(sketch - exact) / exact
            worst, total, count = max(worst, error), total + error, count + 1
    sketched = sorted(r for r in rows if r > SKETCH_WIDTH)
    return {"model": name, "blocks": len(runs["exact"].blocks), "rows": sorted(rows), "sketched": sketched,
            "worst": worst, "mean": total / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ref-wan", "ref-latte", "tiny-wan", "tiny-unet3d", "tiny-latte",
                                                        "tiny-cogvideox"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print("| model | blocks | residual row lengths (sketched: > 96) | largest relative difference | mean |")
    print("|---|---:|---|---:|---:|")
    for name in args.models:
        row = compare(name, args.steps, args.prompts)
        lengths = ", ".join(str(r) for r in row["rows"]) + ("" if row["sketched"] else " (all kept exactly)")
        print(f"| {name} | {row['blocks']} | {lengths} | {row['worst']:.3%} | {row['mean']:.3%} |", flush=True)


if __name__ == "__main__":
    main()
