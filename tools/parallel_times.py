"""Wall time of a calibration and a plan search as one process and as N torchrun ranks, side by side.

    python tools/parallel_times.py [--model builtin:ref-latte] [--prompts examples/shapes-calibration.txt]
        [--steps 20] [--ranks 2] [--repeat 3] [--search-prompts 4] [--max-error 0.05] [--device cpu] [--out DIR]

Runs, interleaved `--repeat` times: `f3compile calibrate` as one process and under
`torchrun --nproc-per-node N`, then `f3compile plan --search` (block actions drop and reuse, one
stage) on that calibration with the first `--search-prompts` prompts, both ways. Every timed run is
a fresh process, so each includes starting Python and loading the model. It prints the median wall
time of each, the ratio one process / N ranks, and whether the outputs are the same: the
calibration's stats.safetensors byte for byte, the plan's JSON apart from its `seconds`, in all three.

One process uses torch's default threads (all cores); each rank gets cores / N threads
(torchrun's default of 1 thread, raised so that N ranks use the same cores one process does). A
third variant, one process at cores / N threads, shows how the split itself scales.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(argv[:6])} … failed:\n{result.stderr[-2000:]}")
    return seconds


def plan_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    data["search"].pop("seconds")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:ref-latte")
    parser.add_argument("--prompts", default="examples/shapes-calibration.txt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--search-prompts", type=int, default=4)
    parser.add_argument("--max-error", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/parallel-times"))
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    one_env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    ranks_env = one_env | {"OMP_NUM_THREADS": str(max(1, cores // args.ranks))}
    f3 = [sys.executable, "-m", "f3compile"]

    def launcher(ranked: bool) -> list[str]:
        if not ranked:
            return f3
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks), "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), "-m", "f3compile"]

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    search_prompts = args.out / "search-prompts.txt"
    lines = [line for line in Path(args.prompts).read_text().splitlines() if line.strip() and not line.startswith("#")]
    search_prompts.write_text("\n".join(lines[:args.search_prompts]) + "\n")
    calibrate = ["calibrate", args.model, "--prompts", args.prompts, "--steps", str(args.steps), "--guidance-scale",
                 str(args.guidance_scale), "--no-heatmaps", "--device", args.device]
    # variant -> (ranked, environment): one process on every core, N ranks, one process at a rank's threads
    variants = {"1": (False, one_env), str(args.ranks): (True, ranks_env), "1t": (False, ranks_env)}
    times: dict[str, list[float]] = {f"{what} {v}": [] for what in ("calibrate", "search") for v in variants}
    for repeat in range(args.repeat):
        order = list(variants)[repeat % len(variants):] + list(variants)[:repeat % len(variants)]  # rotate
        for variant in order:
            ranked, env = variants[variant]
            output = args.out / f"calib-{variant}"
            shutil.rmtree(output, ignore_errors=True)
            times[f"calibrate {variant}"].append(timed(launcher(ranked) + calibrate + ["-o", str(output)], env))
    for repeat in range(args.repeat):
        order = list(variants)[repeat % len(variants):] + list(variants)[:repeat % len(variants)]
        for variant in order:
            ranked, env = variants[variant]
            search = ["plan", str(args.out / "calib-1"), "--search", "--prompts", str(search_prompts), "--max-error",
                      str(args.max_error), "--actions", "drop,reuse", "--stages", "1", "--device", args.device,
                      "-o", str(args.out / f"plan-{variant}.json")]
            times[f"search {variant}"].append(timed(launcher(ranked) + search, env))

    stats = [(args.out / f"calib-{v}" / "stats.safetensors").read_bytes() for v in variants]
    plans = [plan_json(args.out / f"plan-{v}.json") for v in variants]
    same_stats, same_plan = all(x == stats[0] for x in stats), all(x == plans[0] for x in plans)
    print(f"{args.model}: calibration of {len(lines)} prompts x {args.steps} steps; search on {len(lines[:args.search_prompts])} "
          f"prompts; {cores} cores, {args.repeat} interleaved runs each, medians (each run starts Python and loads "
          "the model)")
    threads = max(1, cores // args.ranks)
    accepted = len(json.loads((args.out / "plan-1.json").read_text())["search"]["accepted"])
    print(f"| run | 1 process | {args.ranks} ranks | 1 process / {args.ranks} ranks | 1 process, {threads} thread(s) | "
          f"that / {args.ranks} ranks | same result |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for what, same in (("calibrate", same_stats), (f"search ({accepted} steps accepted)", same_plan)):
        key = what.split()[0]
        one, many, thin = (statistics.median(times[f"{key} {v}"]) for v in ("1", str(args.ranks), "1t"))
        print(f"| {what} | {one:.1f} s | {many:.1f} s | {one / many:.2f}x | {thin:.1f} s | {thin / many:.2f}x | "
              f"{'yes' if same else 'NO'} |")
    # the work alone, without starting Python and loading the model: what the outputs record (last run)
    loops = {v: (json.loads((args.out / f"calib-{v}" / "calibration.json").read_text())["seconds"],
                 json.loads((args.out / f"plan-{v}.json").read_text())["search"]["seconds"]) for v in variants}
    print(f"the work alone (the `seconds` the last run's outputs record: calibrate, rank 0's sampling; search, all "
          f"of it, exchanges included): "
          f"calibrate {loops['1'][0]:.1f} s / {loops[str(args.ranks)][0]:.1f} s / {loops['1t'][0]:.1f} s, search "
          f"{loops['1'][1]:.1f} s / {loops[str(args.ranks)][1]:.1f} s / {loops['1t'][1]:.1f} s (1 process / "
          f"{args.ranks} ranks / 1 process at {threads} thread(s))")
    (args.out / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    if not (same_stats and same_plan):
        sys.exit("error: the ranks' output differs from one process's")


if __name__ == "__main__":
    main()
