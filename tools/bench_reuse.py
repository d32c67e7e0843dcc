"""Temporal reuse vs dropping, measured side by side: loop speedup, FLOP prediction, residual memory.

    python tools/bench_reuse.py builtin:arch-latte,width-scale=0.25 [--shape 16x128x128] \
        [--steps 20] [--periods 2,3] [--repeat 10] [--backend torch] [--json reuse.json]

No calibration is needed: the plans are built on the model directly, one stage over a trajectory
of `--steps` steps, every temporal block either reused with period K (for each K of `--periods`)
or dropped (the upper bound of what skipping the blocks can save). Each plan goes through
`f3compile.benchmark.bench` (dense and pruned programs interleaved, medians; a reuse stage's time is its
programs' medians weighted by the steps each one runs), so the speedups are of the whole denoising
loop at batch 1. Quality is not measured here (see `f3compile eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--shape", help="FxHxW (default: the model's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--periods", default="2,3")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from f3compile.benchmark import bench
    from f3compile.models import find_temporal_units, load_model
    from f3compile.models.base import resolve_shapes
    from f3compile.planning import PruningPlan

    model = load_model(args.model)
    frames = height = width = None
    if args.shape:
        frames, height, width = (int(x) for x in args.shape.lower().split("x"))
    shapes = resolve_shapes(model, frames, height, width)
    units = find_temporal_units(model, shapes)
    blocks = list(dict.fromkeys(unit.block for unit in units))

    def plan(**stage) -> PruningPlan:
        result = PruningPlan.dense(model, units)
        result.calibration["steps"] = args.steps
        for key, value in stage.items():
            setattr(result.stages[0], key, value)
        return result

    variants = {f"reuse k={k}": plan(reuse={b: k for b in blocks}) for k in map(int, args.periods.split(","))}
    variants["drop all blocks"] = plan(drop_blocks=list(blocks))
    rows = []
    print(f"{args.model} {shapes.frames}x{shapes.height}x{shapes.width}, {len(blocks)} temporal blocks, "
          f"{args.steps} steps, backend {args.backend}, {args.repeat} interleaved calls per program")
    print(f"{'plan':<16} {'dense ms':>9} {'pruned ms':>9} {'speedup':>8} {'FLOP pred':>9} {'residual MiB':>12}")
    for name, variant in variants.items():
        stage, loop = bench(model, variant, args.backend, shapes, repeat=args.repeat)
        rows.append({"plan": name, "stage": stage, "loop": loop})
        print(f"{name:<16} {loop['dense_ms'] / args.steps:>9.1f} {loop['pruned_ms'] / args.steps:>9.1f} "
              f"{loop['speedup']:>7.3f}x {loop['predicted_speedup']:>8.3f}x {stage.get('residual_mb', 0.0):>12.2f}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "shape": [shapes.frames, shapes.height, shapes.width],
                                         "steps": args.steps, "backend": args.backend, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
