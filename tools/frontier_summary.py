"""Summarise a frontier evaluation (tools/run_frontier.sh): which plans are at iso-quality, and how fast.

Iso-quality, per variant against the dense model of the same run: Fréchet distance (pooled over
seeds) within the dense model's spread over seeds (dense pooled Fréchet + its per-seed standard
deviation), and colour, shape and direction accuracy each at least dense − 2 points.

usage: python tools/frontier_summary.py frontier-results/ref-unet3d/eval/eval.json [...]
"""

from __future__ import annotations

import json
import sys

POINTS = 0.02  # accuracy slack: dense − 2 points


def iso_quality(entry: dict, dense: dict) -> bool:
    frechet_ok = entry["frechet"] <= dense["frechet"] + dense["frechet_spread"]
    accuracy_ok = all(entry["accuracy"][k] >= dense["accuracy"][k] - POINTS for k in ("color", "shape", "direction"))
    return frechet_ok and accuracy_ok


def main(paths: list[str]) -> None:
    for path in paths:
        result = json.loads(open(path).read())
        dense = result["results"]["dense"]
        print(f"\n{result['model']['spec']} ({path}): dense Fréchet {dense['frechet']:.0f} ± {dense['frechet_spread']:.0f}, "
              f"colour {dense['accuracy']['color']:.1%} shape {dense['accuracy']['shape']:.1%} "
              f"direction {dense['accuracy']['direction']:.1%}")
        print("| variant | kind | speedup | Fréchet | colour | shape | direction | latents rel. L2 | iso-quality |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        best = None
        for name, entry in result["results"].items():
            if name == "dense":
                continue
            ok = iso_quality(entry, dense)
            if ok and (best is None or entry["speedup"] > best[1]):
                best = (name, entry["speedup"])
            acc = entry["accuracy"]
            rel = entry.get("latents_rel_l2_vs_dense")
            print(f"| {name} | {entry.get('kind', '—')} | {entry['speedup']:.2f}× | {entry['frechet']:,.0f} | "
                  f"{acc['color']:.1%} | {acc['shape']:.1%} | {acc['direction']:.1%} | "
                  f"{'—' if rel is None else f'{rel:.3f}'} | {'yes' if ok else 'no'} |")
        print(f"fastest at iso-quality: {best[0]} at {best[1]:.2f}×" if best else "no plan at iso-quality")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
