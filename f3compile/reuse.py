"""Temporal reuse, step by step: which blocks a stage program reuses at a given step.

Shared by the planner, the eager reference and the runtime (which must not import the compiler).
Within a stage, step j (0 = the stage's first step) computes a block of period k when j % k == 0
and otherwise adds the residual cached at the last computed step.
"""

from __future__ import annotations

from typing import Callable

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


def sequenced(stage_index: Callable[[int], int], periods: list[dict[str, int]],
              programs: list[dict[tuple[str, ...], Callable]]) -> Callable[[int], Callable]:
    """A fresh `denoise_for(t)` for one denoising loop over static stage programs.

    `stage_index(t)` picks the stage; `periods[i]` are stage i's reuse periods; `programs[i]` maps
    each tuple of reused blocks (() = compute every block) to a callable
    `(sample, timestep, encoder_hidden_states, *residuals) -> [noise_pred, *residuals]` (inputs:
    the reused blocks' residuals; outputs: those of the blocks with period > 1 it computes, both in
    `periods` order). Within a stage the residuals are carried from step to step; they never
    cross stages. Returns noise_pred as float32 on the device of `sample`.
    """
    import torch

    clock = StageClock()
    cache: dict = {}

    def denoise_for(timestep: int):
        index = stage_index(timestep)
        step = clock.tick(index)
        if step == 0:
            cache.clear()
        reused = pattern_at(periods[index], step)
        program = programs[index][reused]
        computed = [b for b, period in periods[index].items() if period > 1 and b not in reused]

        def denoise(sample, t, context):
            outputs = program(sample, t, context, *(cache[block] for block in reused))
            cache.update(zip(computed, outputs[1:]))
            return outputs[0].to(sample.device, torch.float32)
        return denoise
    return denoise_for
