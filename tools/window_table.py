#!/usr/bin/env python
"""FLOP-predicted speedups of frame-window plans at the published shapes of the full-attention presets.

    python tools/window_table.py [--presets arch-wan2.1-1.3b ...] [--json out.json]

Each preset is built on the meta device (no weights) and counted with `torch.utils.flop_counter`
at its published shape (CFG batch), the way `f3compile inspect --model builtin:arch-…` counts it.
The plans need no calibration (speed depends on how many heads run at which window, not which):
  W=0         every head within its own frame      W=1     every head within ±1 frame
  ratio 0.5   half the heads of every layer at W=0
each alone and with every transformer block reused at K=2 (computed on every other step; a stage
of 50 steps, as the published samplers run). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = ("arch-wan2.1-1.3b", "arch-wan2.1-14b", "arch-wan2.1-i2v-14b", "arch-wan2.2-ti2v-5b", "arch-cogvideox-2b",
           "arch-cogvideox-5b", "arch-hunyuanvideo1.5")
STEPS = 50


def plans(units):
    from f3compile.planning.plan import Stage

    def windows(rule):
        return {u.id: [rule(h, u) for h in range(u.heads)] for u in units}

    made = {
        "W=0": windows(lambda h, u: 0),
        "W=1": windows(lambda h, u: 1),
        "ratio 0.5 (W=0)": windows(lambda h, u: 0 if h < u.heads // 2 else None),
    }
    blocks = list(dict.fromkeys(u.block for u in units))
    out = {}
    for name, per_unit in made.items():
        out[name] = Stage(timesteps=(999, 0), windows=per_unit)
        out[name + " + reuse K=2"] = Stage(timesteps=(999, 0), windows=per_unit, reuse={b: 2 for b in blocks})
    out["reuse K=2 alone"] = Stage(timesteps=(999, 0), reuse={b: 2 for b in blocks})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from f3compile.models.discovery import find_temporal_units
    from f3compile.models.loading import load_model
    from f3compile.planning.cost import ModelCost

    rows = []
    for preset in args.presets:
        started = time.perf_counter()
        model = load_model(f"builtin:{preset}", meta=True)
        units = find_temporal_units(model)
        cost = ModelCost.measure(model, units)
        core = sum(cost._attention_split(u.id)["core"] for u in units)
        shape = model.shapes
        row = {"preset": preset, "shape": f"{shape.frames}x{shape.height}x{shape.width}",
               "tokens": units[0].text_tokens + units[0].frames * units[0].tokens,
               "tflops_per_call": cost.total_flops / 2 / 1e12, "core_share": core / cost.total_flops, "plans": {}}
        for name, stage in plans(units).items():
            removed, _ = cost.stage_removed(stage, STEPS)
            row["plans"][name] = cost.total_flops / (cost.total_flops - removed)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"{preset}: counted in {row['seconds']}s", file=sys.stderr)
    names = list(rows[0]["plans"])
    print("| preset, shape | tokens | TFLOP per call | attention core | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(names))
    for row in rows:
        cells = " | ".join(f"{row['plans'][n]:.2f}×" for n in names)
        print(f"| {row['preset']} {row['shape']} | {row['tokens']:,} | {row['tflops_per_call']:,.0f} | "
              f"{100 * row['core_share']:.1f}% | {cells} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
