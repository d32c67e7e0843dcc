#!/usr/bin/env python
"""The default `--query-fraction` of `calibrate`, and what recording fewer queries changes.

    python tools/query_fraction.py [builtin:arch-wan2.1-14b ...]
    python tools/query_fraction.py --stability runs/qf [--model builtin:ref-wan]

The first form counts on the meta device (seconds, no weights), at each full 3-D attention preset's
published shape: tokens per frame, the fraction `auto_query_fraction` chooses, the query positions
recorded per frame and the recorder's predicted share of the plain sampling calls at that fraction.

`--stability DIR` calibrates the model (15 prompts of examples/shapes-calibration.txt × 20 steps,
guidance 5) with every query recorded and with 1/2 … 1/16 of them, writes the same window plans
from each calibration, and prints how far the per-head scores moved and how many (stage, head)
window choices differ from the plans of the full recording.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = ("builtin:arch-wan2.1-1.3b", "builtin:arch-wan2.1-14b",
           "builtin:arch-cogvideox-2b", "builtin:arch-cogvideox-5b")


def main(specs: list[str]) -> None:
    from f3compile.calibration.calibrate import auto_query_fraction
    from f3compile.models.base import resolve_shapes
    from f3compile.models.discovery import find_temporal_units
    from f3compile.models.loading import load_model

    print("| preset | shape | tokens per frame | default query fraction | positions recorded per frame "
          "| recorder ÷ plain calls (predicted) |")
    print("|---|---|---:|---:|---:|---:|")
    for spec in specs or PRESETS:
        model = load_model(spec, meta=True, precision="bf16")
        shapes = resolve_shapes(model, None, None, None)
        units = find_temporal_units(model, shapes)
        tokens = max(unit.tokens for unit in units if unit.spatiotemporal)
        fraction, share = auto_query_fraction(model, units, shapes)
        shown = "not counted" if share is None else f"{share:.2f}"
        print(f"| `{spec}` | {shapes.frames}×{shapes.height}×{shapes.width} | {tokens:,} | {fraction:.4f} "
              f"| {max(1, round(fraction * tokens)):,} | {shown} |")


FRACTIONS = ("1", "0.5", "0.25", "0.125", "0.0625")
PLANS = {  # name -> `plan` arguments (window granularity)
    **{f"W={w}, ratio {r}, 2 stages": ["--window", str(w), "--ratio", str(r), "--stages", "2"]
       for w in (0, 1) for r in (0.25, 0.5, 0.75)},
    "W=1, kept mass 0.5, 2 stages": ["--window", "1", "--keep-mass", "0.5", "--stages", "2"],
    "W=1, kept mass 0.5, 3 stages": ["--window", "1", "--keep-mass", "0.5", "--stages", "3"],
}


def _choices(path: Path) -> dict:
    plan = json.loads(path.read_text())
    return {(index, unit, head): window for index, stage in enumerate(plan["stages"])
            for unit, windows in stage["windows"].items() for head, window in enumerate(windows)}


def stability(out: Path, model: str) -> None:
    f3 = [sys.executable, "-m", "f3compile"]
    root = Path(__file__).resolve().parents[1]
    for fraction in FRACTIONS:
        calib = out / f"q{fraction}"
        if not (calib / "calibration.json").is_file():
            subprocess.run(f3 + ["calibrate", model, "--prompts", str(root / "examples/shapes-calibration.txt"),
                                 "--steps", "20", "--guidance-scale", "5", "--no-heatmaps", "--query-fraction",
                                 fraction, "-o", str(calib)], check=True, cwd=root, stdout=subprocess.DEVNULL)
        for number, arguments in enumerate(PLANS.values()):
            subprocess.run(f3 + ["plan", str(calib), "--granularity", "window", *arguments,
                                 "-o", str(out / f"plan{number}-q{fraction}.json")], check=True, cwd=root,
                           stdout=subprocess.DEVNULL)
    scores = {fraction: json.loads((out / f"plan0-q{fraction}.json").read_text())["scores"] for fraction in FRACTIONS}
    tokens = json.loads((out / "q1" / "calibration.json").read_text())["units"][0]["tokens"]
    print(f"{model}: {tokens} query positions per frame; per-head cross-frame-mass scores against every query recorded")
    print("| recorded per frame | mean relative change | largest relative change |")
    print("|---:|---:|---:|")
    full = scores["1"]
    for fraction in FRACTIONS[1:]:
        changes = [abs(b - a) / a for unit in full for a, b in zip(full[unit]["per_head"], scores[fraction][unit]["per_head"])]
        print(f"| {round(float(fraction) * tokens)} | {sum(changes) / len(changes):.1%} | {max(changes):.1%} |")
    print()
    print("| window plan | windowed (stage, head) pairs, every query recorded | " + " | ".join(
        f"differ at {round(float(f) * tokens)} per frame" for f in FRACTIONS[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(FRACTIONS) - 1))
    for number, name in enumerate(PLANS):
        reference = _choices(out / f"plan{number}-q1.json")
        row = []
        for fraction in FRACTIONS[1:]:
            other = _choices(out / f"plan{number}-q{fraction}.json")
            row.append(str(sum(reference.get(key) != other.get(key) for key in set(reference) | set(other))))
        print(f"| {name} | {len(reference)} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stability"]:
        rest = sys.argv[2:]
        model = rest[rest.index("--model") + 1] if "--model" in rest else "builtin:ref-wan"
        stability(Path(rest[0]), model)
    else:
        main(sys.argv[1:])
