"""Temporal reuse, step by step: which blocks a stage program reuses at a given step.

Shared by the planner, the eager reference and the runtime (which must not import the compiler).
Within a stage, step j (0 = the stage's first step) computes a block of period k when j % k == 0
and otherwise adds the residual cached at the last computed step.
"""

from __future__ import annotations

MAX_PROGRAMS = 8  # patterns of reused blocks, i.e. static programs, allowed in one stage


def pattern_at(periods: dict[str, int], step: int) -> tuple[str, ...]:
    """The blocks reused (not computed) at `step` of a stage, in `periods` order."""
    return tuple(block for block, period in periods.items() if period > 1 and step % period)


class StageClock:
    """Counts the steps spent in the current stage; `tick(stage)` is called once per denoising
    step and returns that step's index within its stage (0 when the stage has just begun)."""

    def __init__(self) -> None:
        self.stage: int | None = None
        self.step = 0

    def tick(self, stage: int) -> int:
        if stage != self.stage:
            self.stage, self.step = stage, 0
        else:
            self.step += 1
        return self.step


def step_patterns(periods: dict[str, int], most: int) -> list[tuple[str, ...]]:
    """Every distinct `pattern_at` over a stage, ordered by the first step that has it (step 0,
    computing every block, gives () first). Raises ValueError past `most` patterns.

    The blocks computed at step j are those whose period divides j, so a pattern is fixed by the
    set D of periods dividing j and first appears at j = lcm(D); the candidates are the lcms of
    subsets of the periods, built one period at a time (never the whole, possibly huge, cycle).
    """
    import math

    distinct = sorted({k for k in periods.values() if k > 1})
    first: dict[tuple[str, ...], int] = {pattern_at(periods, 0): 0}
    steps = {1}
    for period in distinct:
        steps |= {math.lcm(step, period) for step in steps}
        found = {}
        for step in sorted(steps):
            found.setdefault(pattern_at(periods, step), step)
        if len(set(found) | {pattern_at(periods, 0)}) > most:
            raise ValueError(f"more than {most} patterns")
        steps = set(found.values())
    for pattern, step in sorted(found.items(), key=lambda item: item[1]) if distinct else []:
        first.setdefault(pattern, step)
    return list(first)
