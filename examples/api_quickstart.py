"""f3compile from Python, end to end: load → calibrate → plan → inspect → compile → export → generate → bench.

    python examples/api_quickstart.py [OUTPUT_DIR] [--model builtin:tiny-unet3d]

Runs on a CPU in well under a minute with the tiny builtin Latte; any model spec works (a diffusers
directory, `builtin:ref-latte`, ...). Writes OUTPUT_DIR/{calib, plan.json, build, dense.gif,
pruned.gif, bench.json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import f3compile as f3

PROMPTS = ["a red circle moving left", "a blue square moving up"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path("api-quickstart"))
    parser.add_argument("--model", default="builtin:tiny-latte")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    out = args.output

    model = f3.load(args.model)
    stats = f3.calibrate(model, PROMPTS, f3.CalibrationConfig(steps=args.steps, guidance_scale=5.0, heatmaps=False),
                         output_dir=out / "calib")
    print(f"calibrated {len(stats.units)} temporal attention units of {model.spec}")

    plan = f3.plan(stats, f3.PlanOptions(ratio=0.5, granularity="block", reuse=2, stages=2))
    plan.save(out / "plan.json")
    print(f3.inspect(plan, model))

    dense = f3.compile(model)
    pruned = f3.compile(model, plan)  # one pruned torch.export program per stage (and per reuse pattern)
    f3.export(pruned, config=f3.ExportConfig(samples=1), output_dir=out / "build", plan_path=out / "plan.json")
    dense.save(out / "dense-build")

    options = f3.GenerateOptions(steps=args.steps, guidance_scale=5.0, backend="onnxruntime")
    f3.generate(out / "build", PROMPTS[0], options).save(out / "pruned.gif")
    f3.generate(out / "dense-build", PROMPTS[0], f3.GenerateOptions(steps=args.steps, guidance_scale=5.0)).save(
        out / "dense.gif")

    result = f3.bench(model, plan, f3.BenchOptions(backends=("torch",), repeat=3))
    print(result.text)
    (out / "bench.json").write_text(json.dumps(result.to_json(model.spec), indent=2) + "\n")
    loop = next(row for row in result.rows if row["stage"] == "loop")
    print(f"{model.spec}: {loop['speedup']:.2f}x measured, {loop['predicted_speedup']:.2f}x FLOP-predicted -> {out}")


if __name__ == "__main__":
    main()
