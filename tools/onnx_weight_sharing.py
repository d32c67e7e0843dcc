#!/usr/bin/env python
"""A two-stage ONNX build's weights on disk and in onnxruntime: one shared file against one copy
per stage.

    python tools/onnx_weight_sharing.py [--model builtin:arch-wan2.1-1.3b,width-scale=0.25]
        [--shape 21x160x160] [--repeat 5]

Calibrates the model (one prompt, two steps), makes a two-stage window plan (half of every unit's
heads at W = 0, so the stages' windowed attentions differ) and exports it with `--target onnx`.
Then, each arrangement in a fresh process:

- shared: the runtime's sessions (`runtime.backends.OnnxruntimeBackend` with the build's
  `WeightPool`): one read-only mapping of `onnx/weights.onnx.data`, no per-session repacking;
- per stage: a plain `onnxruntime.InferenceSession` per stage graph, each loading its own copy
  (with the runtime's other options: no arena, `runtime.backends.session_options`).

For each: the process's proportional set size (PSS, which counts a page two sessions map once)
after both stages' sessions ran once, less the one before they were made, and the per-call time of
each stage, interleaved over `--repeat` rounds, medians. Beside them: the bytes on disk (the weight
file against the sum of every graph's initializers) and what `inspect --memory` counts for generate's
programs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving left"


def pss() -> int:
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("error: /proc/self/smaps_rollup has no Pss line (Linux only)")


def child(build: Path, arrangement: str, repeat: int) -> dict:
    import onnxruntime
    import torch

    sys.path.insert(0, str(ROOT))
    from f3compile.manifest import load_manifest
    from f3compile.runtime.backends import WeightPool, make_backend, session_options

    torch.set_num_threads(2)
    stages = load_manifest(build)["stages"]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(spec["shape"], generator=generator) if spec["dtype"].startswith("float")
              else torch.full(spec["shape"], 500, dtype=getattr(torch, spec["dtype"])) for spec in stages[0]["inputs"]]
    before = pss()
    if arrangement == "shared":
        pool = WeightPool()
        calls = [make_backend("onnxruntime", build, stage, "cpu", pool=pool).run for stage in stages]
    else:
        def plain(stage):
            session = onnxruntime.InferenceSession(str(build / stage["files"]["onnx"]["path"]),
                                                   session_options(["CPUExecutionProvider"]),
                                                   providers=["CPUExecutionProvider"])
            names = [spec["name"] for spec in stage["inputs"]]
            return lambda *args: session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        calls = [plain(stage) for stage in stages]
    for call in calls:  # every session has run once: its weights are resident
        call(*inputs)
    resident = pss() - before
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for index, call in enumerate(calls):
            started = time.perf_counter()
            call(*inputs)
            times[index].append(time.perf_counter() - started)
    return {"pss": resident, "ms": [1000 * statistics.median(t) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:arch-wan2.1-1.3b,width-scale=0.25")
    parser.add_argument("--shape", default="21x160x160")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], int(args.child[2]))))
        return
    sys.path.insert(0, str(ROOT))
    import onnx

    import f3compile as f3
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.exporters import ExportConfig
    from f3compile.exporters.onnx import initializer_nbytes
    from f3compile.options import Shapes
    from f3compile.planning import make_plan

    frames, height, width = (int(x) for x in args.shape.split("x"))
    mib = 2**20
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        stats = f3.calibrate(args.model, [PROMPT], CalibrationConfig(steps=2, frames=frames, height=height, width=width,
                                                                     heatmaps=False))
        plan = make_plan(stats, 0.5, "window", window=0, stages=2)
        plan.save(work / "plan.json")
        manifest = f3.export(args.model, work / "plan.json", ExportConfig(samples=1), output_dir=work / "build")
        build = work / "build"
        referenced = sum(initializer_nbytes(init) for stage in manifest["stages"]
                         for init in onnx.load(str(build / stage["files"]["onnx"]["path"]),
                                               load_external_data=False).graph.initializer)
        on_disk = (build / "onnx" / "weights.onnx.data").stat().st_size
        predictions, _ = api.memory_report(work / "plan.json", args.model, Shapes(frames, height, width),
                                           precision="fp32", target="onnx", device="cpu")
        generate = next(p for p in predictions if p.verb == "generate")
        counted = sum(size for name, size in generate.device.items() if "weights" in name and "stage" in name
                      or name.startswith("windowed"))
        runs = {}
        for arrangement in ("shared", "per stage"):
            done = subprocess.run([sys.executable, __file__, "--child", str(build), arrangement, str(args.repeat)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"error: {arrangement} failed: {done.stderr.strip().splitlines()[-1]}")
            runs[arrangement] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.model} at {args.shape}, two-stage window plan, fp32 ONNX on the CPU (onnxruntime), "
          f"medians of {args.repeat} interleaved calls per stage")
    print(f"on disk: {on_disk / mib:,.0f} MiB in onnx/weights.onnx.data; the graphs reference {referenced / mib:,.0f} MiB "
          f"({referenced / on_disk:.2f}x)")
    print("| sessions | PSS after both ran | stage 0 ms | stage 1 ms |")
    print("|---|---:|---:|---:|")
    for arrangement, run in runs.items():
        print(f"| {arrangement} | {run['pss'] / mib:,.0f} MiB | {run['ms'][0]:.1f} | {run['ms'][1]:.1f} |")
    print(f"inspect --memory counts {counted / mib:,.0f} MiB of programs' weights for generate on the CPU "
          f"(shared ÷ per stage PSS: {runs['shared']['pss'] / runs['per stage']['pss']:.2f})")


if __name__ == "__main__":
    main()
