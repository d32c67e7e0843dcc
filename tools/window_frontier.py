"""The window-plan frontier of a full-attention model (ref-wan): eval's quality beside what each plan removes.

For every variant of an `f3compile eval` run (its eval.json, which names each variant's plan file)
prints one markdown row:

- Fréchet distance pooled over seeds, and the per-seed mean ± sd;
- colour, shape and direction accuracy with 95% bootstrap intervals; PSNR and SSIM against dense;
- the share of the attention core (softmax(QKᵀ)V of the self-attention units) the plan removes
  over the trajectory on the evaluated model, its FLOP-predicted speedup there, and eval's measured
  speedup;
- the FLOP-predicted speedup of the same plan carried over to a published architecture (default
  `builtin:arch-wan2.1-1.3b` at 81×480×832, counted on the meta device), two ways:
    same W:     each preset layer takes the plan of the layer at its relative depth (layer i of n takes
                layer floor(i·m/n) of m), the same share of its heads at each frame distance W
                (W counted in latent frames, unchanged), the same reuse period for its block; this is
                what `f3compile inspect PLAN --model builtin:arch-…` does;
    same share: as "same W", but each W widened to the smallest W' whose share of a head's core on
                the preset's latent frames is at least the share W keeps on the evaluated model's
                frames (the same fraction of keys, not the same distance: the conservative reading).
  Both count the trajectory over the plan's calibration steps (reuse at K skips the same share of
  calls on the preset).

Iso-quality as tools/frontier_summary.py: Fréchet within the dense pooled distance plus its per-seed
spread, and colour, shape and direction each at least dense − 2 points.

usage: python tools/window_frontier.py RESULTS/ref-wan/eval/eval.json [MORE/eval.json ...]
           [--preset builtin:arch-wan2.1-1.3b] [--frames 81 --height 480 --width 832] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from frontier_summary import iso_quality  # noqa: E402


def widened(plan, source_unit, target_unit):
    """`plan` (carried to the preset) with each window widened to keep at least the core share it
    keeps on `source_unit`'s frames."""
    from f3compile.planning.cost import window_core_share

    def wider(window):
        if window is None:
            return None
        share = window_core_share(source_unit, window)
        return next((w for w in range(target_unit.frames) if window_core_share(target_unit, w) >= share - 1e-12),
                    target_unit.frames - 1)

    stages = [dataclasses.replace(stage, windows={uid: [wider(w) for w in ws] for uid, ws in stage.windows.items()})
              for stage in plan.stages]
    return dataclasses.replace(plan, stages=stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="eval.json of an `f3compile eval` run")
    parser.add_argument("--preset", default="builtin:arch-wan2.1-1.3b")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--json", type=Path, help="also write every row as JSON")
    args = parser.parse_args()

    from f3compile.models import load_model
    from f3compile.models.base import resolve_shapes
    from f3compile.models.discovery import find_temporal_units
    from f3compile.planning.cost import ModelCost
    from f3compile.planning.inspect import summarize
    from f3compile.planning.plan import PruningPlan, carry_over

    preset = load_model(args.preset, meta=True)
    shapes = resolve_shapes(preset, args.frames, args.height, args.width)
    preset_units = find_temporal_units(preset, shapes)
    preset_cost = ModelCost.measure(preset, preset_units, shapes)
    rows = []
    for path in args.results:
        result = json.loads(path.read_text())
        model = load_model(result["model"]["spec"])
        units = find_temporal_units(model)
        cost = ModelCost.measure(model, units)
        dense = result["results"]["dense"]
        print(f"\n{result['model']['spec']} ({path}), {result['videos_per_variant']} videos per variant; carried over to "
              f"{args.preset} at {shapes.frames}x{shapes.height}x{shapes.width} "
              f"({preset_units[0].frames} latent frames of {preset_units[0].tokens} tokens)")
        print("| variant | Fréchet (seeds) | colour | shape | direction | PSNR / SSIM | core removed | predicted | "
              "measured | 1.3B same W | 1.3B same share | iso-quality |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, entry in result["results"].items():
            row = {"model": result["model"]["spec"], "variant": name, "frechet": entry["frechet"],
                   "frechet_seed_mean": entry["frechet_seed_mean"], "frechet_spread": entry["frechet_spread"],
                   "accuracy": entry["accuracy"], "accuracy_ci95": entry["accuracy_ci95"],
                   "psnr_vs_dense": entry.get("psnr_vs_dense"), "ssim_vs_dense": entry.get("ssim_vs_dense"),
                   "measured_speedup": entry.get("speedup"), "iso_quality": name != "dense" and iso_quality(entry, dense)}
            if name != "dense":
                plan = PruningPlan.load(entry["file"])
                summary = summarize(plan, model, units, cost=cost)
                carried = carry_over(plan, preset_units, preset.spec)
                carried.model["fingerprint"] = preset.fingerprint
                same_w = summarize(carried, preset, preset_units, shapes, cost=preset_cost)
                same_share = summarize(widened(carried, units[0], preset_units[0]), preset, preset_units, shapes,
                                       cost=preset_cost)
                row.update(core_removed=summary["trajectory_core_removed"] / summary["core_flops"],
                           predicted_speedup=summary["predicted_speedup"],
                           carried_same_w=same_w["predicted_speedup"], carried_same_share=same_share["predicted_speedup"])
            rows.append(row)
            acc, ci = entry["accuracy"], entry["accuracy_ci95"]

            def pct(key):
                return f"{acc[key]:.1%} [{ci[key][0] * 100:.0f}, {ci[key][1] * 100:.0f}]"

            psnr = "—" if entry.get("psnr_vs_dense") is None else f"{entry['psnr_vs_dense']:.1f} dB / {entry['ssim_vs_dense']:.3f}"
            flops = ("— | 1.000× | 1.00× | 1.000× | 1.000×" if name == "dense" else
                     f"{row['core_removed']:.1%} | {row['predicted_speedup']:.3f}× | {entry.get('speedup', float('nan')):.2f}× | "
                     f"{row['carried_same_w']:.3f}× | {row['carried_same_share']:.3f}×")
            print(f"| {name} | {entry['frechet']:,.0f} ({entry['frechet_seed_mean']:,.0f} ± {entry['frechet_spread']:,.0f}) | "
                  f"{pct('color')} | {pct('shape')} | {pct('direction')} | {psnr} | {flops} | "
                  f"{'—' if name == 'dense' else 'yes' if row['iso_quality'] else 'no'} |")
        iso = [r for r in rows if r["iso_quality"] and r["model"] == result["model"]["spec"]]
        if iso:
            best = max(iso, key=lambda r: r["core_removed"])
            print(f"most attention core removed at iso-quality: {best['variant']} ({best['core_removed']:.1%}; "
                  f"predicted {best['predicted_speedup']:.3f}×, on {args.preset} {best['carried_same_w']:.3f}× same W, "
                  f"{best['carried_same_share']:.3f}× same share)")
        else:
            print("no plan at iso-quality")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
