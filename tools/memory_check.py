#!/usr/bin/env python
"""The memory report (`inspect --memory`) against measured peaks on the CPU.

    python tools/memory_check.py [--model builtin:arch-wan2.1-1.3b,width-scale=0.0625]
        [--shapes 21x160x160 41x240x240 81x320x320] [--verbs calibrate search export generate]

For each shape and verb a fresh process imports what the verb needs, notes its resident set,
runs the verb through the Python API (calibrate: one prompt, two steps; search: one sampling loop
of the plan search's measurement, two steps; export: an ONNX export verified on one sample;
generate: two steps from the exported build with the torch backend) and reports its peak
resident set less the one before the model was loaded. Beside it: what the report predicts for a
CPU-only machine (everything in one memory), from the meta device. glibc's mmap threshold is
fixed (MALLOC_MMAP_THRESHOLD_=65536), so that freed activations go back to the system and the
peak is that of what was alive at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("calibrate", "search", "export", "generate")
PROMPT = "a red circle moving left"


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(spec: str, shape: str, verb: str, work: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    import f3compile as f3
    from f3compile.calibration import CalibrationConfig
    from f3compile.exporters import ExportConfig

    if verb == "export":
        import onnx  # noqa: F401 - imported before the baseline, as the verb imports it
        import onnxruntime  # noqa: F401
    torch.set_num_threads(2)
    frames, height, width = (int(x) for x in shape.split("x"))
    warm(verb, work)
    before = rss()
    if verb == "calibrate":
        f3.calibrate(spec, [PROMPT], CalibrationConfig(steps=2, frames=frames, height=height, width=width, heatmaps=False))
    elif verb == "search":
        from f3compile.models.base import VideoShapes
        from f3compile.sampling import denoise_loop, initial_latents

        model = f3.load(spec)
        shapes = VideoShapes(1, frames, height, width)
        cond, uncond = model.encode_prompts([PROMPT])
        generator = torch.Generator().manual_seed(0)
        latents = initial_latents(model.latent_shape(shapes), model.scheduler, generator, model.native_layout)
        with torch.no_grad():
            denoise_loop(model.denoise, model.scheduler, latents, cond, uncond, 2, 5.0, generator,
                         layout=model.native_layout, family=model.family)
    elif verb == "export":
        from f3compile.options import CompileOptions, Shapes

        f3.export(spec, None, ExportConfig(samples=1), options=CompileOptions(shapes=Shapes(frames, height, width)),
                  output_dir=work / "build")
    elif verb == "generate":
        from f3compile.options import GenerateOptions

        f3.generate(work / "build", PROMPT, GenerateOptions(steps=2))
    return {"before": before, "peak": peak()}


def warm(verb: str, work: Path) -> None:
    """The same verb once on tiny-wan: imports, kernels, thread pools and allocator arenas are the
    process's fixed cost, not the model's, and are in the baseline."""
    import f3compile as f3
    from f3compile.calibration import CalibrationConfig
    from f3compile.exporters import ExportConfig
    from f3compile.options import GenerateOptions

    tiny = "builtin:tiny-wan"
    if verb == "calibrate":
        f3.calibrate(tiny, [PROMPT], CalibrationConfig(steps=2, heatmaps=False))
    elif verb == "search":
        f3.load(tiny).encode_prompts([PROMPT])
    elif verb in ("export", "generate"):
        if not (work / "warm" / "manifest.json").is_file():
            f3.export(tiny, None, ExportConfig(samples=1), output_dir=work / "warm")
        if verb == "generate":
            f3.generate(work / "warm", PROMPT, GenerateOptions(steps=2))


def predicted(spec: str, shape: str) -> dict[str, int]:
    sys.path.insert(0, str(ROOT))
    from f3compile import memory
    from f3compile.models.base import VideoShapes
    from f3compile.models.loading import load_model

    frames, height, width = (int(x) for x in shape.split("x"))
    model = load_model(spec, meta=True)
    shapes = VideoShapes(1, frames, height, width)
    names = dict(zip(memory.VERBS, VERBS))
    # the export is an ONNX one; generate runs its build with the torch backend (the .pt2 programs)
    onnx = {names[row.verb]: row.device_total for row in memory.predict(model, shapes, None, "fp32", "cpu", target="onnx")}
    generate = next(row for row in memory.predict(model, shapes, None, "fp32", "cpu", target="torch")
                    if row.verb == "generate")
    return {**onnx, "generate": generate.device_total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:arch-wan2.1-1.3b,width-scale=0.0625")
    parser.add_argument("--shapes", nargs="+", default=["21x160x160", "41x240x240", "81x320x320"])
    parser.add_argument("--verbs", nargs="+", default=list(VERBS), choices=VERBS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.child[2], Path(args.child[3]))))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    mib = 2**20
    rows = []
    print(f"{args.model}, fp32 on the CPU: peak resident set less the one before loading, against the report")
    print("| shape | verb | measured | predicted | predicted ÷ measured |")
    print("|---|---|---:|---:|---:|")
    for shape in args.shapes:
        model = predicted(args.model, shape)
        with tempfile.TemporaryDirectory() as work:
            verbs = list(args.verbs)
            if "generate" in verbs and "export" not in verbs:
                verbs.insert(verbs.index("generate"), "export")  # generate runs the exported build
            for verb in verbs:
                done = subprocess.run([sys.executable, __file__, "--child", args.model, shape, verb, work],
                                      capture_output=True, text=True, env=env, cwd=ROOT)
                if done.returncode:
                    raise SystemExit(f"error: {verb} at {shape} failed: {done.stderr.strip().splitlines()[-1]}")
                if verb not in args.verbs:
                    continue
                run = json.loads(done.stdout.strip().splitlines()[-1])
                measured = run["peak"] - run["before"]
                row = {"shape": shape, "verb": verb, "measured": measured, "predicted": model[verb],
                       "ratio": model[verb] / measured}
                rows.append(row)
                print(f"| {shape} | {verb} | {measured / mib:,.0f} MiB | {model[verb] / mib:,.0f} MiB | {row['ratio']:.2f} |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
