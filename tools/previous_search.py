"""`f3compile plan --search` with the search as it was before the budgeted one, for a comparison on
one calibration: every action measured alone with a whole sampling loop, then accepted greedily in
order of measured error per FLOP gained, each acceptance measured with another whole loop.

The module is read from this repository's history (`git show REV:f3compile/planning/search.py`, REV
09bd24e^ by default), its model calls adapted to the current API (prompts encoded with
`encode_conditioned`, the loop given the condition and family), and it replaces the search for the
one command. The plan it writes records the whole loops it spent (`calls`, `budget`), so both
searches are compared in the same units.

usage: python tools/previous_search.py [--rev REV] plan CALIB --search --prompts P ... -o plan.json
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADAPT = [  # (the previous source, what it becomes): each must occur exactly once
    ("self.context = [tuple(x.to(device) for x in model.encode_prompts([prompts[i]])) for i in mine]",
     "video = VideoShapes(1, int(shapes['frames']), int(shapes['height']), int(shapes['width']))\n"
     "        self.context = [tuple(None if x is None else x.to(device) for x in "
     "model.encode_conditioned([prompts[i]], video)) for i in mine]"),
    ("for start, (cond, uncond) in zip(self.starts, self.context):",
     "for start, (cond, uncond, condition) in zip(self.starts, self.context):"),
    ("self.steps, self.guidance, generator))",
     "self.steps, self.guidance, generator, condition=condition, family=self.model.family))"),
    ("    group: Group | None = None,\n) -> tuple",
     "    group: Group | None = None,\n    search_budget: float = 0,\n) -> tuple"),
]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def previous_module(rev: str) -> types.ModuleType:
    shown = subprocess.run(["git", "show", f"{rev}:f3compile/planning/search.py"], cwd=ROOT,
                           capture_output=True, text=True)
    if shown.returncode != 0:  # a shallow clone, or a revision this history does not hold
        why = (shown.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"git cannot show the search at {rev} ({why}); run this in a clone with the repository's history "
             "(git fetch --unshallow)")
    source = shown.stdout
    for old, new in ADAPT:
        if source.count(old) != 1:
            fail(f"the search at {rev} is not the one this tool adapts (missing: {old[:60]!r}); pass --rev 09bd24e^")
        source = source.replace(old, new)
    module = types.ModuleType("f3compile.planning._previous_search")
    module.__package__ = "f3compile.planning"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:f3compile/planning/search.py", "exec"), module.__dict__)
    return module


def main(argv: list[str]) -> int:
    rev = "09bd24e^"
    if argv[:1] == ["--rev"]:
        rev, argv = argv[1], argv[2:]
    previous = previous_module(rev)

    import f3compile.planning.search as current

    def search_plan(model, stats, *args, **kwargs):
        plan, steps = previous.search_plan(model, stats, *args, **kwargs)
        loop = int(stats.meta["steps"])
        loops = plan.search["evaluations"] + 1  # the dense loop, then one whole loop per evaluation
        plan.search.update(calls=loops * loop, loop_calls=loop, budget=float(loops))
        return plan, steps

    current.search_plan = search_plan
    from f3compile.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
