"""Do the statistics of a bf16 calibration choose what an fp32 one chooses?

Calibrates each model twice from the same prompts and seeds, once with the denoiser and text
encoder in fp32 and once in bf16 (`calibrate --precision`), makes the same plans from both and
counts the choices that differ: per stage, each block dropped or kept (block plans at ratio 0.5),
each head pruned or kept (head plans), each block's reuse (reuse plans), and on full 3-D attention
each head's window W (`--keep-mass`, `--ratio`).

    python tools/precision_choices.py                       # the tiny builtins
    python tools/precision_choices.py --models ref-wan ref-latte --steps 10
"""

from __future__ import annotations

import argparse
import json
import time

import f3compile as f3
from f3compile.planning import make_plan

TINY = ["tiny-unet3d", "tiny-animatediff", "tiny-latte", "tiny-tuneavideo", "tiny-wan", "tiny-wan2.2", "tiny-cogvideox"]
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


def plans(stats) -> dict[str, object]:
    """The plans compared: name -> PruningPlan."""
    full = any(getattr(unit, "spatiotemporal", False) for unit in stats.units)
    made = {"block 0.5": make_plan(stats, 0.5, "block", "cross_frame_mass", 2)}
    if stats.meta.get("residual_change") != "off":
        made["reuse 0.5 K=2"] = make_plan(stats, 0.5, "block", "residual_change", 2, reuse=2)
    if full:
        made["window W=1 keep-mass 0.55"] = make_plan(stats, None, "window", "cross_frame_mass", 2, window=1, keep_mass=0.55)
        made["window W=0 0.5"] = make_plan(stats, 0.5, "window", "cross_frame_mass", 2, window=0)
    else:
        made["head 0.5"] = make_plan(stats, 0.5, "head", "cross_frame_mass", 2)
    return made


def choices(plan) -> dict[tuple, object]:
    """Every decision of a plan as (stage, kind, unit[, head]) -> value."""
    out = {}
    for number, stage in enumerate(plan.stages):
        data = stage.to_dict()
        for block in data["drop_blocks"]:
            out[(number, "drop", block)] = True
        for block, period in data.get("reuse", {}).items():
            out[(number, "reuse", block)] = period
        for unit, heads in data["prune_heads"].items():
            for head in heads:
                out[(number, "head", unit, head)] = True
        for unit, windows in data.get("windows", {}).items():
            for head, window in enumerate(windows):
                if window is not None:
                    out[(number, "window", unit, head)] = window
    return out


def slots(plan, stats) -> int:
    """How many decisions a plan of this granularity makes (each unit or head of each stage)."""
    units = stats.units
    per_stage = {"block": len({u.block for u in units}), "head": sum(u.heads for u in units),
                 "window": sum(u.heads for u in units if getattr(u, "spatiotemporal", False))}
    return per_stage.get(plan.granularity, len(units)) * len(plan.stages)


def compare(model: str, steps: int, prompts: list[str]) -> list[dict]:
    runs = {}
    for precision in ("fp32", "bf16"):
        started = time.perf_counter()
        stats = f3.calibrate(f"builtin:{model}", prompts, f3.CalibrationConfig(
            steps=steps, heatmaps=False, precision=precision))
        runs[precision] = (stats, time.perf_counter() - started)
    rows = []
    fp32_plans, bf16_plans = plans(runs["fp32"][0]), plans(runs["bf16"][0])
    for name, plan in fp32_plans.items():
        a, b = choices(plan), choices(bf16_plans[name])
        differ = sum(1 for key in set(a) | set(b) if a.get(key) != b.get(key))
        rows.append({"model": model, "plan": name, "slots": slots(plan, runs["fp32"][0]), "chosen_fp32": len(a),
                     "differ": differ, "seconds_fp32": round(runs["fp32"][1], 1), "seconds_bf16": round(runs["bf16"][1], 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=TINY)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        rows += compare(model, args.steps, PROMPTS)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| model | plan | decisions | chosen (fp32) | differ (bf16) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['plan']} | {row['slots']} | {row['chosen_fp32']} | {row['differ']} |")


if __name__ == "__main__":
    main()
