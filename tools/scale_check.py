#!/usr/bin/env python
"""Every verb at deployment scale, measured beside the memory report's prediction.

    python tools/scale_check.py                      # on a GPU: arch-wan2.1-14b at 81x720x1280, bf16
    python tools/scale_check.py --model "builtin:arch-wan2.1-1.3b,width-scale=0.0625" --shape 9x64x64 \
        --device cpu --precision fp32 --target onnx  # the same flow as a smoke test on the CPU

One process builds the model once (a preset's weights are drawn, not downloaded) and runs, one
after the other, with the device's peak counter reset before each: `calibrate` (one prompt, two
steps, a share of the queries recorded), a two-stage window plan from it (half of each unit's heads
at W = 0), `export` (AOTInductor by default, verified) and `generate` from that build (two steps).
Each verb's measured peak (`torch.cuda.max_memory_allocated`; on the CPU the growth of the peak
resident set, which is not what the GPU report predicts) is printed beside what
`inspect --memory` predicts for that verb, model, shape, precision and plan.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving left"
VERB_OF = {"calibrate": "calibrate", "export": "export", "generate": "generate"}


def peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset(device) -> int:
    """Reset the peak counter; the bytes the device holds now (the baseline of the next verb)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:arch-wan2.1-14b")
    parser.add_argument("--shape", default="81x720x1280")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--target", default="aoti", choices=("aoti", "onnx"))
    parser.add_argument("--query-fraction", type=lambda text: None if text == "auto" else float(text), default=None,
                        help="share of query positions recorded (default auto: calibrate's own default)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    import f3compile as f3
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.devices import check_device
    from f3compile.exporters import ExportConfig
    from f3compile.options import GenerateOptions, Shapes
    from f3compile.planning import make_plan

    device = check_device(args.device)
    frames, height, width = (int(x) for x in args.shape.split("x"))
    gib = 2**30
    rows = []
    started = time.perf_counter()
    model = f3.load(args.model, precision=args.precision)
    print(f"built {args.model} in {args.precision} in {time.perf_counter() - started:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as work:
        measured = {}
        base = reset(device)
        started = time.perf_counter()
        stats = f3.calibrate(model, [PROMPT], CalibrationConfig(
            steps=args.steps, frames=frames, height=height, width=width, heatmaps=False, device=args.device,
            precision=args.precision, query_fraction=args.query_fraction))
        measured["calibrate"] = (peak_bytes(device) - (0 if device.type == "cuda" else base), time.perf_counter() - started)
        plan = make_plan(stats, 0.5, "window", window=0, stages=2)
        plan.save(Path(work) / "plan.json")
        base = reset(device)
        started = time.perf_counter()
        f3.export(model, plan, ExportConfig(target=args.target, device=args.device, precision=args.precision, samples=1),
                  output_dir=Path(work) / "build")
        measured["export"] = (peak_bytes(device) - (0 if device.type == "cuda" else base), time.perf_counter() - started)
        backend = "aoti" if args.target == "aoti" else "torch"
        del model  # generate runs from the build alone, as a deployment does
        base = reset(device)
        started = time.perf_counter()
        f3.generate(Path(work) / "build", PROMPT, GenerateOptions(steps=args.steps, backend=backend, device=args.device))
        measured["generate"] = (peak_bytes(device) - (0 if device.type == "cuda" else base), time.perf_counter() - started)
        predictions, context = api.memory_report(Path(work) / "plan.json", args.model, Shapes(frames, height, width),
                                                 precision=args.precision, target=args.target,
                                                 device="cuda" if device.type == "cuda" else "cpu")
    predicted = {p.verb: p.device_total for p in predictions}
    what = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS growth (not the GPU report)"
    print(f"{args.model} at {args.shape}, {args.precision}, {device}: measured ({what}) against inspect --memory")
    print("| verb | measured | predicted | predicted ÷ measured | seconds |")
    print("|---|---:|---:|---:|---:|")
    for verb, (bytes_, seconds) in measured.items():
        ratio = predicted[VERB_OF[verb]] / bytes_ if bytes_ > 0 else float("nan")
        rows.append({"verb": verb, "measured": bytes_, "predicted": predicted[VERB_OF[verb]], "ratio": ratio,
                     "seconds": seconds})
        print(f"| {verb} | {bytes_ / gib:.2f} GiB | {predicted[VERB_OF[verb]] / gib:.2f} GiB | {ratio:.2f} | {seconds:.0f} |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"context": context, "device": str(device), "rows": rows,
                                         "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                                         "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
