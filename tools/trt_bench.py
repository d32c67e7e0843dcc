#!/usr/bin/env python3
"""Time the TensorRT engines of a dense and a pruned build side by side (GPU only).

usage: python tools/trt_bench.py DENSE_BUILD PRUNED_BUILD [--repeat 50] [--json OUT]

Dense and pruned engines run interleaved after warm-up on the same random inputs; the table
shows median and p90 latency per stage and the speedup of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def engine_path(build: Path, stage: dict) -> Path:
    if "trt" not in stage["files"]:
        sys.exit(f"error: {build} has no TensorRT engine for stage {stage['index']}; export with --target trt")
    return build / stage["files"]["trt"]["path"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dense", type=Path)
    parser.add_argument("pruned", type=Path)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from f3compile.exporters.verify import random_feeds
    from f3compile.manifest import load_manifest

    dense, pruned = load_manifest(args.dense), load_manifest(args.pruned)
    dense_engine = engine_path(args.dense, dense["stages"][0])
    rows = []
    for stage in pruned["stages"]:
        feed = random_feeds(stage["inputs"], 1)[0]
        with TrtRunner(EngineFromBytes(BytesFromPath(str(dense_engine)))) as d, \
                TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path(args.pruned, stage))))) as p:
            for _ in range(10):
                d.infer(feed), p.infer(feed)
            times = {"dense": [], "pruned": []}
            for _ in range(args.repeat):  # interleaved: both see the same clocks and neighbours
                for name, runner in (("dense", d), ("pruned", p)):
                    start = time.perf_counter()
                    runner.infer(feed)
                    times[name].append((time.perf_counter() - start) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        p90 = {k: sorted(v)[int(0.9 * (len(v) - 1))] for k, v in times.items()}
        rows.append({"stage": stage["index"], "dense_ms": med["dense"], "pruned_ms": med["pruned"],
                     "dense_p90_ms": p90["dense"], "pruned_p90_ms": p90["pruned"],
                     "speedup": med["dense"] / med["pruned"], "precision": stage["precision"]})
    print(f"{'stage':>5} {'dense ms':>9} {'pruned ms':>9} {'p90 d':>7} {'p90 p':>7} {'speedup':>8}")
    for row in rows:
        print(f"{row['stage']:>5} {row['dense_ms']:>9.3f} {row['pruned_ms']:>9.3f} {row['dense_p90_ms']:>7.3f} "
              f"{row['pruned_p90_ms']:>7.3f} {row['speedup']:>7.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
