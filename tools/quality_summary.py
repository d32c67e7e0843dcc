#!/usr/bin/env python
"""Summarize `tools/run_eval.sh` results against the reference-model targets.

    python tools/quality_summary.py eval-results/ref-unet3d [eval-results/ref-latte ...]

Per model: the dense model's accuracy with 95% bootstrap intervals (targets: colour ≥ 95%, shape ≥
90%, direction ≥ 85%); direction lost with every temporal block dropped (target ≥ 30 points); the
default criterion's plans at ratio 0.5 (1 and 2 stages); and the criterion vs the mean of the
random plans of the same size (1 stage) on Fréchet distance and direction accuracy.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def pct(entry: dict, key: str) -> str:
    value, ci = entry["accuracy"][key], entry.get("accuracy_ci95", {}).get(key)
    return f"{value:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def frechet(entry: dict) -> str:
    return f"{entry['frechet']:,.0f} (seeds {entry.get('frechet_seed_mean', entry['frechet']):,.0f} ± {entry['frechet_spread']:,.0f})"


def summary(directory: Path) -> str:
    criterion = json.loads((directory / "criterion" / "eval.json").read_text())
    results = criterion["results"]
    dense = results["dense"]
    lines = [f"## {directory.name}", "",
             f"{criterion['prompts']} prompts × {criterion['config']['samples']} seeds = "
             f"{criterion['videos_per_variant']} videos per variant.", "",
             "| variant | colour | shape | direction | all | Fréchet | PSNR vs dense | speedup |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        psnr = "—" if entry["psnr_vs_dense"] is None else f"{entry['psnr_vs_dense']:.1f} dB"
        lines.append(f"| {name} | {pct(entry, 'color')} | {pct(entry, 'shape')} | {pct(entry, 'direction')} | "
                     f"{pct(entry, 'all')} | {frechet(entry)} | {psnr} | {entry['speedup']:.2f}× |")
    dropped = results.get("all-blocks-dropped")
    if dropped:
        lost = 100 * (dense["accuracy"]["direction"] - dropped["accuracy"]["direction"])
        lines += ["", f"Every temporal block dropped: direction {lost:.1f} points lost "
                      f"(colour {dropped['accuracy']['color']:.1%}, shape {dropped['accuracy']['shape']:.1%})."]
    random_file = directory / "random" / "eval.json"
    if random_file.is_file():
        random = json.loads(random_file.read_text())
        rows = random["results"]
        lines += ["", f"Criterion vs random plans, ratio 0.5, 1 stage ({random['config']['samples']} seed(s) per prompt):", "",
                  "| granularity | plan | Fréchet | direction | all |", "|---|---|---|---|---|"]
        for granularity in ("block", "attention", "head"):
            mine = rows.get(f"{granularity}-0.5-s1")
            randoms = [v for k, v in rows.items() if k.startswith(f"{granularity}-0.5-s1-random")]
            if mine:
                lines.append(f"| {granularity} | cross_frame_mass | {mine['frechet']:,.0f} | {mine['accuracy']['direction']:.1%} | "
                             f"{mine['accuracy']['all']:.1%} |")
            if randoms:
                lines.append(f"| {granularity} | mean of {len(randoms)} random | "
                             f"{statistics.mean(r['frechet'] for r in randoms):,.0f} "
                             f"({min(r['frechet'] for r in randoms):,.0f}–{max(r['frechet'] for r in randoms):,.0f}) | "
                             f"{statistics.mean(r['accuracy']['direction'] for r in randoms):.1%} | "
                             f"{statistics.mean(r['accuracy']['all'] for r in randoms):.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(summary(Path(arg)) for arg in sys.argv[1:]))
