#!/usr/bin/env python
"""Dense vs structural plans on one model, one process, on a device: the GPU check's benchmark.

    python tools/device_bench.py builtin:arch-latte --shape 16x256x256 --device cuda --precision fp16 \
        --backends torch aoti --aoti-plans block-0.5 --json out.json

Plans need no calibration (speed does not depend on which units are chosen, only on how many):
  block-1.0      every temporal block dropped
  block-0.5      every other temporal block dropped
  attention-0.5  every other temporal attention dropped
  head-0.5       the first half of every unit's heads pruned
  frame-0.5      every other key frame dropped in every unit (keys/values of frames 0, 2, 4, ...)
full 3-D attention (Wan, CogVideoX):
  window0-1.0    every head of every unit within its own frame (W = 0)
  window1-1.0    every head within ±1 frame
  window0-0.5    the first half of every unit's heads at W = 0
  reuse2         every block computed on every other step (its residual reused in between)
  window0-reuse2 every head at W = 0 and every block reused at K = 2
Backends: torch (the compiled programs), eager (the model's own modules with the plan applied in place,
`f3compile.apply`), aoti, onnxruntime; the backends of one plan are timed in one `bench` call.
Each plan is timed with `f3compile.benchmark.bench` (interleaved with the dense program, medians,
CUDA events on a GPU, peak device memory), so the numbers are the ones `f3compile bench` prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLANS = ("block-1.0", "block-0.5", "attention-0.5", "head-0.5", "frame-0.5")
WINDOW_PLANS = ("window0-1.0", "window1-1.0", "window0-0.5")
REUSE_PLANS = ("reuse2", "window0-reuse2")
STEPS = 50  # reuse plans: the steps a stage is split over (K = 2: half compute, half reuse)


def structural_plan(model, units, name: str):
    from f3compile.planning.plan import PruningPlan

    plan = PruningPlan.dense(model, units)
    stage = plan.stages[0]
    blocks = list(dict.fromkeys(u.block for u in units))
    if name == "block-1.0":
        stage.drop_blocks = blocks
    elif name == "block-0.5":
        stage.drop_blocks = blocks[::2]
    elif name == "attention-0.5":
        stage.drop_attention = [u.id for u in units[::2]]
    elif name == "head-0.5":
        stage.prune_heads = {u.id: list(range(u.heads // 2)) for u in units}
    elif name == "frame-0.5":
        stage.keep_frames = {u.id: list(range(0, u.frames, 2)) for u in units}
    elif name in REUSE_PLANS:
        stage.reuse = {block: 2 for block in blocks}
        if name == "window0-reuse2":
            stage.windows = {u.id: [0] * u.heads for u in units}
        return dataclasses.replace(plan, granularity="window" if "window" in name else "block", ratio=1.0,
                                   calibration=dict(plan.calibration, steps=STEPS))
    elif name in WINDOW_PLANS:
        window, share = int(name[6]), float(name.split("-")[1])
        stage.windows = {u.id: [window if h < round(share * u.heads) else None for h in range(u.heads)] for u in units}
        return dataclasses.replace(plan, granularity="window", ratio=share, window=window)
    else:
        raise SystemExit(f"error: unknown plan {name!r}; choose from {', '.join(PLANS + WINDOW_PLANS + REUSE_PLANS)}")
    granularity, ratio = name.split("-")
    return dataclasses.replace(plan, granularity=granularity, ratio=float(ratio))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--shape", help="FRAMESxHEIGHTxWIDTH (default: the model's)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--plans", nargs="+", default=list(PLANS))
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=("torch", "eager", "aoti", "onnxruntime"))
    parser.add_argument("--aoti-plans", nargs="*", default=None, help="plans also timed with aoti (default: all)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from f3compile.benchmark import bench
    from f3compile.kinds.diffusion import parse_shape
    from f3compile.models import find_temporal_units, load_model
    from f3compile.models.base import resolve_shapes

    started = time.perf_counter()
    model = load_model(args.model)
    loaded = time.perf_counter() - started
    shape = parse_shape(args.shape)
    shapes = resolve_shapes(model, *(dataclasses.astuple(shape)[1:] if shape else (None, None, None)))
    started = time.perf_counter()
    units = find_temporal_units(model, shapes)
    discovered = time.perf_counter() - started
    print(f"{args.model} {shapes.frames}x{shapes.height}x{shapes.width}: loaded in {loaded:.1f}s, "
          f"{len(units)} temporal units found in {discovered:.1f}s", flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = []
    for name in args.plans:
        plan = structural_plan(model, units, name)
        backends = [b for b in args.backends
                    if not (b == "aoti" and args.aoti_plans is not None and name not in args.aoti_plans)]
        started = time.perf_counter()
        rows = bench(model, plan, backends, shapes, repeat=args.repeat, device=args.device, precision=args.precision)
        seconds = round(time.perf_counter() - started, 1)
        loops = {row["backend"]: row for row in rows if row["stage"] == "loop"}
        for backend, loop in loops.items():
            loop.update(plan=name, model=args.model, shape=f"{shapes.frames}x{shapes.height}x{shapes.width}",
                        seconds=seconds)
            results.append(loop)
            memory = (f"  peak {loop['dense_peak_mb']:.0f}/{loop['pruned_peak_mb']:.0f} MiB"
                      if loop.get("dense_peak_mb") is not None else "")
            print(f"{args.model:<26} {loop['shape']:<11} {name:<14} {backend:<6} dense {loop['dense_ms']:8.2f} ms  "
                  f"pruned {loop['pruned_ms']:8.2f} ms  {loop['speedup']:.3f}x (FLOP-pred. {loop['predicted_speedup']:.3f}x, "
                  f"eff {loop['efficiency']:.2f}){memory}  [{seconds:.0f}s]", flush=True)
        if "torch" in loops and "eager" in loops:  # the applied pipeline against the compiled program
            print(f"{'':<26} {'':<11} {name:<14} eager speedup / torch speedup = "
                  f"{loops['eager']['speedup'] / loops['torch']['speedup']:.3f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "device": device_name, "precision": args.precision,
                                         "torch": torch.__version__, "discovery_seconds": discovered,
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    from f3compile.errors import F3Error

    try:
        main()
    except F3Error as exc:  # the user's to fix: one line, like the CLI
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
