"""Peak resident memory and wall time of calibration over 10, 100 and 1,000 prompts.

    python tools/calibration_memory.py [--model builtin:tiny-latte] [--counts 10,100,1000] [--steps 2]

Each prompt count runs `f3compile.calibration.calibrate` (no heatmaps, no output directory) in a
fresh subprocess, so no peak carries over from one count to the next. The child reports its peak
resident set size (`ru_maxrss`) once the model is loaded and again after calibrating, the seconds
the calibration took and the bytes of the statistics it returned. The recorder accumulates sums
per (step, unit), so the statistics and the peak should not grow with the number of prompts; the
last line prints the growth from the smallest to the largest count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "standing still")


def make_prompts(count: int) -> list[str]:
    """`count` distinct prompts in the moving-shapes wording (every combination, then numbered)."""
    prompts = []
    for index in range(count):
        color = COLORS[index % len(COLORS)]
        shape = SHAPES[index // len(COLORS) % len(SHAPES)]
        motion = MOTIONS[index // (len(COLORS) * len(SHAPES)) % len(MOTIONS)]
        prompts.append(f"a {color} {shape} {motion}, take {index}")
    return prompts


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(spec: str, count: int, steps: int, threads: int) -> None:
    """Calibrate `spec` on `count` prompts and print one JSON line of measurements."""
    import torch

    from f3compile.calibration import CalibrationConfig, calibrate
    from f3compile.models import load_model

    torch.set_num_threads(threads)
    model = load_model(spec)
    prompts = make_prompts(count)
    loaded_peak = peak_rss_bytes()
    started = time.perf_counter()
    stats = calibrate(model, prompts, CalibrationConfig(steps=steps, heatmaps=False))
    seconds = time.perf_counter() - started
    stats_bytes = sum(t.numel() * t.element_size() for t in stats.tensors.values())
    print(json.dumps({"prompts": count, "seconds": seconds, "loaded_peak": loaded_peak, "peak": peak_rss_bytes(),
                      "stats_bytes": stats_bytes, "units": len(stats.units)}))


def run_child(spec: str, count: int, steps: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, __file__, "--child", str(count), "--model", spec, "--steps", str(steps),
                           "--threads", str(threads)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"calibration on {count} prompts failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-latte", help="model spec (default builtin:tiny-latte)")
    parser.add_argument("--counts", default="10,100,1000", help="prompt counts, comma-separated (default 10,100,1000)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per prompt (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.steps, args.threads)
        return

    counts = [int(x) for x in args.counts.split(",")]
    print(f"{args.model}, {args.steps} steps, CFG, batch 1, {args.threads} thread(s), one fresh process per count",
          flush=True)
    header = (f"{'prompts':>8} | {'seconds':>8} | {'s/prompt':>8} | {'peak RSS after load (MiB)':>25} | "
              f"{'peak RSS (MiB)':>14} | {'calibration adds (MiB)':>22} | {'stats (KiB)':>11}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for count in counts:
        row = run_child(args.model, count, args.steps, args.threads)
        rows.append(row)
        print(f"{count:>8,} | {row['seconds']:>8.1f} | {row['seconds'] / count:>8.3f} | {mib(row['loaded_peak']):>25} | "
              f"{mib(row['peak']):>14} | {mib(row['peak'] - row['loaded_peak']):>22} | "
              f"{row['stats_bytes'] / 1024:>11.1f}", flush=True)
    first, last = rows[0], rows[-1]
    growth = last["peak"] - first["peak"]
    print(f"growth from {first['prompts']:,} to {last['prompts']:,} prompts: peak RSS {growth / 2**20:+.1f} MiB "
          f"({growth / (last['prompts'] - first['prompts']):+.0f} bytes per added prompt), statistics "
          f"{(last['stats_bytes'] - first['stats_bytes']) / 1024:+.1f} KiB; time x{last['seconds'] / first['seconds']:.1f} "
          f"for x{last['prompts'] / first['prompts']:.0f} prompts")


if __name__ == "__main__":
    main()
