#!/usr/bin/env python
"""What onnxscript's pattern rewriter costs and buys in an ONNX export, side by side.

    python tools/onnx_simplify_bench.py builtin:ref-wan [--plan PLAN] [--repeat 15]

The model (and plan) is compiled once. Its stage-0 program is then exported twice, alternately
(`--exports` times each): with torch's default `optimize=True` (constant folding plus the
rewriter), and with `f3compile.exporters.onnx.export_onnx`, which `f3compile export` uses
(`optimize=False`, then constant folding and clean-up without the rewriter). For each
it prints the export time, the node count, and onnxruntime's CPU time per call (medians of
`--repeat` calls, the two sessions interleaved), and the largest difference between the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--plan")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--exports", type=int, default=2)
    args = parser.parse_args()

    import f3compile

    compiled = f3compile.compile(args.model, args.plan)
    program, inputs = compiled.stages[0].program, compiled.inputs()
    with tempfile.TemporaryDirectory() as temporary:
        measure(Path(temporary), args, program, inputs)


def measure(folder: Path, args, program, inputs) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from f3compile import memo
    from f3compile.exporters.onnx import DEFAULT_OPSET, WeightFile, export_onnx
    from f3compile.manifest import INPUT_NAMES, OUTPUT_NAMES

    seconds: dict[str, list[float]] = {"rewriter": [], "f3compile": []}
    for _ in range(args.exports):
        for way in seconds:
            memo.FILES.clear()  # export_onnx keeps what it wrote: time a fresh export each round
            start = time.perf_counter()
            if way == "f3compile":  # its initializers in a weight file of its own, as an export writes them
                with WeightFile(folder / "f3compile.onnx.data") as weights:
                    export_onnx(program, inputs, folder / "f3compile.onnx", weights)
            else:
                torch.onnx.export(program, args=inputs, dynamo=True, opset_version=DEFAULT_OPSET, verbose=False,
                                  input_names=INPUT_NAMES, output_names=OUTPUT_NAMES).save(str(folder / "rewriter.onnx"))
            seconds[way].append(time.perf_counter() - start)
    sessions = {way: ort.InferenceSession(str(folder / f"{way}.onnx"), providers=["CPUExecutionProvider"])
                for way in seconds}
    feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    outputs = {way: session.run(None, feeds)[0] for way, session in sessions.items()}
    runs: dict[str, list[float]] = {way: [] for way in seconds}
    for _ in range(args.repeat):
        for way, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            runs[way].append(time.perf_counter() - start)
    print(f"{args.model}{' + ' + args.plan if args.plan else ''}: stage 0, {args.exports} exports and "
          f"{args.repeat} onnxruntime calls each, alternating")
    for way in seconds:
        nodes = len(onnx.load(str(folder / f"{way}.onnx"), load_external_data=False).graph.node)
        print(f"  {way:9s}: export {statistics.median(seconds[way]):6.1f} s, {nodes:6d} nodes, "
              f"onnxruntime {statistics.median(runs[way]) * 1e3:8.2f} ms per call")
    print(f"  export time ratio {statistics.median(seconds['rewriter']) / statistics.median(seconds['f3compile']):.2f}x, "
          f"onnxruntime time ratio {statistics.median(runs['f3compile']) / statistics.median(runs['rewriter']):.3f} "
          f"(f3compile / rewriter), largest output difference "
          f"{float(np.abs(outputs['rewriter'] - outputs['f3compile']).max()):.2e}")


if __name__ == "__main__":
    main()
