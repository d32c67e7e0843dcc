#!/usr/bin/env python
"""Summarize `tools/run_eval.sh` results: the targets of the reference-model evaluation.

    python tools/quality_summary.py eval-results/ref-latte [eval-results/ref-unet3d ...]

Per model: the dense model's accuracy; direction accuracy with every temporal block dropped
(from the sweep, `block-1-s1`); and at ratio 0.5 (block, head) the default criterion's plan vs
the output_norm plan vs the mean of the random plans, on Fréchet distance and direction accuracy.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summary(directory: Path) -> str:
    controls = json.loads((directory / "controls" / "eval.json").read_text())["results"]
    sweep_file = directory / "sweep" / "eval.json"
    sweep = json.loads(sweep_file.read_text())["results"] if sweep_file.is_file() else {}
    dense = controls["dense"]
    acc = dense["accuracy"]
    lines = [f"## {directory.name}", "",
             f"dense: colour {acc['color']:.1%}, shape {acc['shape']:.1%}, direction {acc['direction']:.1%}, "
             f"all {acc['all']:.1%}; Fréchet {dense['frechet']:.1f} ± {dense['frechet_spread']:.1f}; "
             f"temporal consistency {dense['temporal_consistency']:.3f}"]
    if "block-1-s1" in sweep:
        dropped = sweep["block-1-s1"]
        base = sweep["dense"]["accuracy"]["direction"]
        lines.append(f"all temporal blocks dropped: direction {dropped['accuracy']['direction']:.1%} "
                     f"(dense {base:.1%} in the same run: {100 * (base - dropped['accuracy']['direction']):+.1f} points "
                     f"lost), colour {dropped['accuracy']['color']:.1%}, speedup {dropped['speedup']:.2f}×")
    lines += ["", "| ratio 0.5 | plan | Fréchet | direction | all | PSNR vs dense | speedup |", "|---|---|---|---|---|---|---|"]
    for granularity in ("block", "head"):
        rows = {"cross_frame_mass": controls.get(f"{granularity}-0.5-s1"),
                "output_norm": controls.get(f"{granularity}-0.5-s1-output_norm")}
        randoms = [v for k, v in controls.items() if k.startswith(f"{granularity}-0.5-s1-random")]
        for name, entry in rows.items():
            if entry:
                lines.append(f"| {granularity} | {name} | {entry['frechet']:.1f} | {entry['accuracy']['direction']:.1%} | "
                             f"{entry['accuracy']['all']:.1%} | {entry['psnr_vs_dense']:.1f} dB | {entry['speedup']:.2f}× |")
        if randoms:
            def mean(f):
                return statistics.mean(f(r) for r in randoms)
            lines.append(f"| {granularity} | mean of {len(randoms)} random | {mean(lambda r: r['frechet']):.1f} "
                         f"(min {min(r['frechet'] for r in randoms):.1f}, max {max(r['frechet'] for r in randoms):.1f}) | "
                         f"{mean(lambda r: r['accuracy']['direction']):.1%} | {mean(lambda r: r['accuracy']['all']):.1%} | "
                         f"{mean(lambda r: r['psnr_vs_dense']):.1f} dB | {mean(lambda r: r['speedup']):.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(summary(Path(arg)) for arg in sys.argv[1:]))
