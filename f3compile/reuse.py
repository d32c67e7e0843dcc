"""Temporal reuse, step by step: which blocks a stage program reuses at a given step.

Shared by the planner, the eager reference and the runtime (which must not import the compiler).
Within a stage, step j (0 = the stage's first step) computes a block of period k when j % k == 0
and otherwise adds the residual cached at the last computed step.
"""

from __future__ import annotations


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
