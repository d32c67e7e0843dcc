#!/usr/bin/env python3
"""Markdown table of `f3compile bench --json` files (the loop rows), for docs/BENCHMARKS.md.

usage: python tools/bench_table.py docs/bench/*.json
Files written by tools/device_bench.py (GPU check) get their own table with peak device memory.
"""

import json
import sys
from pathlib import Path


def device_table(paths: list[str]) -> int:
    print("| model @ shape | plan | backend | dense ms | pruned ms | speedup | FLOP-predicted | efficiency | peak MiB dense/pruned |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        data = json.loads(Path(path).read_text())
        for row in data["results"]:
            memory = (f"{row['dense_peak_mb']:.0f} / {row['pruned_peak_mb']:.0f}"
                      if row.get("dense_peak_mb") is not None else "—")
            print(f"| {row['model'].split(':', 1)[1]} @ {row['shape']} | {row['plan']} | {row['backend']} "
                  f"| {row['dense_ms'] / row['steps']:.2f} | {row['pruned_ms'] / row['steps']:.2f} | {row['speedup']:.3f}x "
                  f"| {row['predicted_speedup']:.3f}x | {row['efficiency']:.2f} | {memory} |")
    return 0


def main(paths: list[str]) -> int:
    if paths and all("plan" in r for r in json.loads(Path(paths[0]).read_text())["results"]):
        return device_table(paths)
    print("| model | plan | backend | dense ms/step | pruned ms/step | speedup | FLOP-predicted | efficiency | params |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        data = json.loads(Path(path).read_text())
        granularity = Path(path).stem.rsplit("-", 1)[-1]
        stage_rows = {(r["backend"], r.get("ratio")): r for r in data["results"] if r["stage"] == 0}
        for row in data["results"]:
            if row["stage"] != "loop":
                continue
            stage = stage_rows[(row["backend"], row.get("ratio"))]
            steps = row["steps"]
            print(f"| {data['model'].split(':', 1)[1]} @ {data['shape']} | {granularity} {row.get('ratio', '')} | {row['backend']} "
                  f"| {row['dense_ms'] / steps:.0f} | {row['pruned_ms'] / steps:.0f} | {row['speedup']:.3f}x "
                  f"| {row['predicted_speedup']:.3f}x | {row['efficiency']:.2f} "
                  f"| {stage['pruned_params'] / stage['dense_params']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
