#!/usr/bin/env python
"""Peak memory of one denoiser call: dense, and with every head windowed through `f3compile.apply`.

    python tools/apply_memory.py "builtin:arch-wan2.1-1.3b,width-scale=0.0625" --shape 81x480x832

What `plan --search` measures runs through `apply`, so its memory is this call's. Each variant runs in
a fresh process (peak resident memory is a per-process high-water mark): load the model, apply the
plan (none for dense), one denoiser call on the classifier-free-guidance batch at the shape; the
process reports its peak RSS (`ru_maxrss`) and the seconds the call took. The shape's units are found
on the meta device, so nothing but the call itself runs at full size.

glibc's malloc raises its mmap threshold as large blocks are freed, after which it keeps freed
blocks in the heap: peak RSS then reports the allocator's high-water mark, which varies from run to
run by hundreds of MiB for the same call. The children therefore run with
MALLOC_MMAP_THRESHOLD_=65536 (large blocks are mapped and returned when freed), so peak RSS is what
the call holds; `--default-allocator` measures with glibc's default instead.

Beside peak RSS, each child counts the bytes of the tensors the call's operators made that are alive
at once (a dispatch mode; weights excluded) and names the operator at their peak: the call's own
data, free of code pages, allocator slack and the kernel's small shared constants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("dense", "window0", "window1")


def one(model_spec: str, shape: str, variant: str, batch: int) -> dict:
    import resource
    import time

    import torch

    from f3compile.inplace import install
    from f3compile.kinds.diffusion import parse_shape
    from f3compile.models import find_temporal_units, load_model
    from f3compile.models.base import VideoShapes, resolve_shapes
    from f3compile.planning.plan import PruningPlan

    torch.set_num_threads(2)
    model = load_model(model_spec)
    wanted = parse_shape(shape)
    shapes = resolve_shapes(model, wanted.frames, wanted.height, wanted.width)
    model.shapes = shapes
    units = find_temporal_units(model, shapes)
    sample, timestep, context = model.example_inputs(VideoShapes(batch, shapes.frames, shapes.height, shapes.width),
                                                     cfg=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = None
    if variant != "dense":
        plan = PruningPlan.dense(model, units)
        plan.stages[0].windows = {u.id: [int(variant[-1])] * u.heads for u in units}
    from f3compile.tracing import LiveTensors

    # weights and inputs are not the call's: views of them (a transposed weight) are not counted
    tensors = LiveTensors([*model.denoiser.parameters(), *model.denoiser.buffers(), sample, timestep, context])
    started = time.perf_counter()
    with torch.no_grad():
        if plan is None:
            with tensors.mode:
                model.denoise(sample, timestep, context)
        else:
            with install(model, plan, units), tensors.mode:
                model.denoise(sample, timestep, context)
    seconds = time.perf_counter() - started
    return {"variant": variant, "tokens": units[0].sequence, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "before_call_mb": before, "peak_tensors_mb": tensors.peak / 2**20, "peak_tensors_at": tensors.at,
            "seconds": round(seconds, 1), "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--shape", required=True, help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=2, help="rows per call (2: the guidance batch the search runs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--default-allocator", action="store_true", help="glibc's own mmap threshold (see above)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.shape, args.one, args.batch)))
        return
    rows = []
    env = dict(os.environ) if args.default_allocator else dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for variant in args.variants:
        done = subprocess.run([sys.executable, __file__, args.model, "--shape", args.shape, "--batch", str(args.batch),
                               "--one", variant], capture_output=True, text=True, cwd=ROOT, env=env)
        if done.returncode:
            raise SystemExit(f"error: {variant} failed: {done.stderr.strip().splitlines()[-1]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{variant:<8} {row['tokens']:>7} tokens  batch {row['batch']}  peak RSS {row['peak_rss_mb']:8.0f} MiB  "
              f"(before the call {row['before_call_mb']:6.0f} MiB)  tensors at their peak {row['peak_tensors_mb']:6.0f} MiB "
              f"({row['peak_tensors_at']})  call {row['seconds']:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "shape": args.shape, "rows": rows,
                                         "allocator": "default" if args.default_allocator else "mmap threshold 65536"},
                                        indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
