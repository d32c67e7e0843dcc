#!/usr/bin/env python
"""Extra peak memory of calibrating full 3-D attention, measured and predicted.

    python tools/window_recorder_memory.py [--model builtin:arch-wan2.1-1.3b,width-scale=0.0625]
        [--shapes 41x96x96 81x96x96 81x128x128] [--published builtin:arch-wan2.1-1.3b:81x480x832]

For each shape, two fresh subprocesses run the same two denoiser calls (CFG batch, two steps, so
that the residual-change statistic holds one step's residuals while comparing the next), one
plain and one with the `AttentionRecorder` attached; the difference of their peak resident set
sizes is the recorder's extra peak. Next to it the model of what the recorder holds at its peak:

  residuals   blocks × B·N·min(C, k) × 4    every block's residual of the previous step, kept as
                                           its k = 96-direction sketch (`--residual-change sketch`,
                                           the default; `exact` keeps blocks × B·N·C × 4)
  one unit    4 × B·N·C × 4                the residual input, fp32 keys of all heads, the projected
                                           output and one head's share
  one chunk   3 × B·H·c·N × 4              logits, probabilities and per-frame sums of c recorded
                                           queries of every head and batch row, c chosen so that
                                           B·H·c·N × 4 ≤ 64 MiB (never the N×N matrix)

and the same model at the published shape (`--published`, counted from the preset's discovered
units on the meta device), which is the number to hold against a GPU's memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec: str, shape: str, record: bool, change: str, fraction: float) -> None:
    import resource
    import time

    import torch

    sys.path.insert(0, str(ROOT))
    from f3compile.calibration.recorder import AttentionRecorder
    from f3compile.models.base import VideoShapes
    from f3compile.models.discovery import find_temporal_units, temporal_blocks
    from f3compile.models.loading import load_model

    torch.set_num_threads(1)
    frames, height, width = (int(x) for x in shape.split("x"))
    model = load_model(spec)
    shapes = VideoShapes(1, frames, height, width)
    units = find_temporal_units(model, shapes)
    inputs = model.example_inputs(shapes, cfg=True)
    recorder = AttentionRecorder(model.denoiser, units, temporal_blocks(units), steps=2, change=change,
                                 query_fraction=fraction)
    with torch.no_grad():
        model.denoise(*inputs)  # warm: allocator pools, lazily built buffers
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if record:
            recorder.attach()
        started = time.perf_counter()
        for step in range(2):
            recorder.step = step
            model.denoise(*inputs)
        seconds = time.perf_counter() - started
        recorder.detach()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    unit = units[0]
    print(json.dumps({"peak": peak, "before": before, "seconds": seconds, "units": len(units), "blocks": len(temporal_blocks(units)),
                      "tokens": unit.sequence, "channels": unit.channels, "heads": unit.heads,
                      "batch": int(inputs[0].shape[0])}))


def predicted(blocks: int, batch: int, tokens: int, channels: int, heads: int, change: str = "sketch",
              fraction: float = 1.0) -> dict:
    """The memory report's model of the recorder (`f3compile.memory.recorder_extra`) for `blocks`
    full 3-D attention blocks of `tokens` tokens (text included), `channels` wide, `heads` heads."""
    from f3compile.memory import recorder_extra
    from f3compile.models.base import TemporalUnit

    units = [TemporalUnit(id=f"blocks.{i}.attn1", block=f"blocks.{i}", heads=heads, head_dim=channels // heads,
                          frames=1, channels=channels, tokens=tokens) for i in range(blocks)]
    parts = list(recorder_extra(units, batch, change, fraction).values()) + [0]
    return {"residuals": parts[0], "unit": parts[1], "chunk": parts[2], "total": sum(parts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:arch-wan2.1-1.3b,width-scale=0.0625")
    parser.add_argument("--shapes", nargs="+", default=["41x96x96", "81x96x96", "81x128x128"])
    parser.add_argument("--published", default="builtin:arch-wan2.1-1.3b:81x480x832")
    parser.add_argument("--change", choices=("sketch", "exact", "off"), default="sketch",
                        help="how the recorder keeps the residual-change statistic (calibrate --residual-change)")
    parser.add_argument("--query-fraction", type=float, default=1.0, help="share of query positions recorded")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "1", args.child[3], float(args.child[4]))
        return
    gib = 2 ** 30
    print(f"residual change: {args.change}, query fraction {args.query_fraction}")
    print("| shape | tokens | measured extra peak | predicted (residuals + unit + chunk) | time recorded ÷ plain |")
    print("|---|---:|---:|---:|---:|")
    for shape in args.shapes:
        runs = {}
        for record in (False, True):
            out = subprocess.run([sys.executable, __file__, "--child", args.model, shape, str(int(record)), args.change,
                                  str(args.query_fraction)],
                                 check=True, capture_output=True, text=True).stdout
            runs[record] = json.loads(out.strip().splitlines()[-1])
        extra = runs[True]["peak"] - runs[False]["peak"]
        r = runs[True]
        model = predicted(r["blocks"], r["batch"], r["tokens"], r["channels"], r["heads"], args.change,
                          args.query_fraction)
        ratio = runs[True]["seconds"] / runs[False]["seconds"]
        print(f"| {shape} | {r['tokens']:,} | {extra / 2**20:,.0f} MiB | {model['total'] / 2**20:,.0f} MiB | {ratio:.2f} |",
              flush=True)
    spec, _, shape = args.published.rpartition(":")
    sys.path.insert(0, str(ROOT))
    from f3compile.models.base import VideoShapes
    from f3compile.models.discovery import find_temporal_units, temporal_blocks
    from f3compile.models.loading import load_model

    frames, height, width = (int(x) for x in shape.split("x"))
    model = load_model(spec, meta=True)
    units = find_temporal_units(model, VideoShapes(1, frames, height, width))
    unit = units[0]
    parts = predicted(len(temporal_blocks(units)), 2, unit.sequence, unit.channels, unit.heads, args.change,
                      args.query_fraction)
    weights = sum(p.numel() for p in model.denoiser.parameters())
    print(f"\n{spec} at {shape}: {unit.sequence:,} tokens, {len(units)} blocks; recorder extra peak "
          f"{parts['total'] / gib:.1f} GiB (residuals {parts['residuals'] / gib:.1f}, one unit {parts['unit'] / gib:.2f}, "
          f"one chunk {parts['chunk'] / gib:.2f}); the model's weights {weights * 2 / gib:.1f} GiB in bf16, "
          f"{weights * 4 / gib:.1f} GiB in fp32")


if __name__ == "__main__":
    main()
