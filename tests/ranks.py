"""Calibrate every tiny builtin and search a plan (tiny-wan), as one process or as each of torchrun's ranks.

    python tests/ranks.py OUT                              # one process
    torchrun --nproc-per-node 2 tests/ranks.py OUT         # two ranks (gloo): must write the same bytes

`tests/test_parallel.py` runs it both ways and compares what rank 0 wrote with what one process wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import f3compile as f3
from f3compile import parallel

PROMPTS = ["a red circle moving left", "a blue square moving right", "a green triangle moving up"]
# (builtin, prompts per sampling call): 3 prompts split 1 + 2 over two ranks; batch 2 makes 2 batches
MODELS = [("tiny-unet3d", 1), ("tiny-animatediff", 1), ("tiny-latte", 2), ("tiny-tuneavideo", 1), ("tiny-wan", 1),
          ("tiny-wan2.2", 1), ("tiny-cogvideox", 1), ("tiny-cogvideo", 1)]
STEPS = 2


def main(out: Path) -> None:
    calibrations = {}
    for name, batch in MODELS:
        config = f3.CalibrationConfig(steps=STEPS, batch_size=batch, heatmaps=False)
        calibrations[name] = f3.calibrate(f"builtin:{name}", PROMPTS, config, output_dir=out / name)
    # tiny-wan's default actions (drop, reuse, window) over two stages: it accepts drops and windows. The
    # calibration every rank got back (not the file rank 0 wrote) is what the search starts from.
    options = f3.PlanOptions(search=True, max_error=0.05, stages=2)
    plan = f3.plan(calibrations["tiny-wan"], options, model="builtin:tiny-wan", prompts=PROMPTS)
    if parallel.group().writer:
        plan.save(out / "search.json")
    parallel.group().barrier("rank 0 wrote the plan")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    parallel.finish(0)
