"""`plan --search`: choose per (stage, temporal block) the action whose *measured* effect is smallest.

Criterion plans rank units by what calibration saw; a searched plan checks its choices against the
one thing a user cares about, the video, by running them. Actions per (stage, block): drop the block,
reuse it (computed at every k-th step of the stage, its residual re-added in between; one action
per period given: `reuse_periods`), or prune
the lower-scored half of every attention's heads in it. Greedy, in two passes over the calibration prompts (their seeds, steps,
guidance and shapes):

1. every single action alone: the relative L2 error of the final latents against the dense model
   (mean over prompts) and the FLOPs it removes from the trajectory;
2. actions in order of error per FLOP removed (cheapest to lose first; one action per (stage,
   block): the first that fits), each added to the plan and measured together with what is
   already accepted; kept while the error stays within `max_error`, and, with a target speedup,
   until the FLOP-predicted speedup reaches it;
3. only with a target speedup that pass 2 did not reach: the same order again, where an action
   that removes more than the one a (stage, block) already has (reuse:2 -> reuse:4, reuse ->
   drop) replaces it, measured and kept under the same rules — so a target beyond what the gentlest actions give
   is reached with the least measured error the greedy order finds.

Every accepted step is reported with its measured error and the predicted speedup, and recorded in
the plan (`search`), so the plan carries a known deviation for any model: no probe, no labels.
The search runs offline once; the plan it writes is static like every other plan. Under torchrun
the ranks split the prompts (`_Runner`); the accepted steps and the plan are those of one process.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..calibration import criteria
from ..calibration.stats import CalibrationStats
from ..errors import F3Error
from ..models.base import TemporalUnit, VideoModel, VideoShapes
from ..parallel import Group, Part
from ..sampling import denoise_loop, initial_latents
from .cost import ModelCost
from ..inplace import install
from .plan import PruningPlan, Stage, make_plan, split_steps
from .schedule import predicted_speedup

ACTIONS = ("drop", "reuse", "heads", "window")
FULL_ATTENTION_ACTIONS = ("drop", "reuse", "window")  # head pruning is not defined for full 3-D attention here


@dataclass
class Step:
    stage: int
    block: str
    action: str
    error: float
    predicted_speedup: float

    def to_dict(self) -> dict:
        return {"stage": self.stage, "block": self.block, "action": self.action,
                "error": round(self.error, 6), "predicted_speedup": round(self.predicted_speedup, 6)}


def _apply(stage: Stage, block: str, action: str, units: list[TemporalUnit], head_order: dict[str, list[int]],
           reuse_period: int = 2) -> None:
    """Set `block`'s action in `stage`, replacing the one it had."""
    if block in stage.drop_blocks:
        stage.drop_blocks.remove(block)
    stage.reuse.pop(block, None)
    for unit in units:
        if unit.block == block:
            stage.prune_heads.pop(unit.id, None)
            stage.windows.pop(unit.id, None)
    if action.startswith("window:"):  # every head of the block's attention within ±W frames
        window = int(action.split(":", 1)[1])
        for unit in units:
            if unit.block == block:
                stage.windows[unit.id] = [window] * unit.heads
        return
    if action == "drop":
        stage.drop_blocks.append(block)
        return
    if action.startswith("reuse:"):
        stage.reuse[block] = int(action.split(":", 1)[1])
        return
    for unit in units:
        if unit.block == block:
            stage.prune_heads[unit.id] = sorted(head_order[unit.id][: unit.heads // 2])


class _Runner:
    """Final latents of the calibration prompts under a plan (eager, stage-switched). Prompt i starts
    from the noise it started from in calibration (seed + i). Under torchrun each rank runs its span
    of the prompts and the per-prompt errors are gathered in prompt order, so every rank takes the
    mean of the same numbers in the same order as one process does, and makes the same choices."""

    def __init__(self, model: VideoModel, stats: CalibrationStats, prompts: list[str], units: list[TemporalUnit],
                 group: Group | None = None):
        from ..calibration.calibrate import prompt_generator

        meta = stats.meta
        self.model, self.units, self.group = model, units, group or Group()
        self.steps, self.guidance = int(meta["steps"]), float(meta["guidance_scale"])
        shapes = meta["shapes"]
        self.shape = model.latent_shape(VideoShapes(1, int(shapes["frames"]), int(shapes["height"]), int(shapes["width"])))
        self.counts = [len(Part(rank, self.group.size).span(len(prompts), "prompts")) for rank in range(self.group.size)]
        mine = self.group.part.span(len(prompts), "prompts")
        device = self.group.device
        self.starts = [initial_latents(self.shape, model.scheduler, prompt_generator(int(meta["seed"]), i),
                                       model.native_layout).to(device) for i in mine]
        self.context = [tuple(x.to(device) for x in model.encode_prompts([prompts[i]])) for i in mine]
        self.dense = self.run(None)
        self.calls = 0

    def run(self, plan: PruningPlan | None) -> list[torch.Tensor]:
        """Final latents of every prompt with `plan` applied in place (`f3compile.apply`'s path: what
        the search measures is what a pipeline and the build run, at the pruned program's memory)."""
        finals = []
        applied = install(self.model, plan, self.units) if plan is not None else None
        try:
            for start, (cond, uncond) in zip(self.starts, self.context):
                if applied is not None:
                    applied.reset()  # each prompt is a sampling loop of its own
                generator = torch.Generator().manual_seed(0)  # DDIM with eta 0 draws nothing; other schedulers: fixed
                finals.append(denoise_loop(self.model.denoise, self.model.scheduler, start.clone(), cond, uncond,
                                           self.steps, self.guidance, generator))
        finally:
            if applied is not None:
                applied.remove()
        return finals

    def error(self, plan: PruningPlan) -> float:
        self.calls += 1
        finals = self.run(plan)
        errors = [float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(finals, self.dense)]
        errors = self.group.gather_values(errors, self.counts, "measuring a candidate plan")
        return sum(errors) / len(errors)


def search_plan(
    model: VideoModel,
    stats: CalibrationStats,
    prompts: list[str],
    cost: ModelCost,
    units: list[TemporalUnit],
    max_error: float | None = None,
    target_speedup: float | None = None,
    stages: int = 2,
    criterion: str = criteria.DEFAULT_CRITERION,
    actions: tuple[str, ...] | None = None,
    reuse_period: int = 2,
    reuse_periods: tuple[int, ...] | None = None,
    log: Callable[[str], None] | None = None,
    windows: tuple[int, ...] = (0, 1, 2),
    group: Group | None = None,
) -> tuple[PruningPlan, list[Step]]:
    """The searched plan and its accepted steps (see the module docstring). With `group` (torchrun's
    ranks) the prompts are split across the ranks; the plan and its path are those of one process."""
    if max_error is None and target_speedup is None:
        raise F3Error("--search needs --max-error E, --target-speedup S, or both")
    if max_error is not None and not max_error > 0:
        raise F3Error(f"--max-error must be > 0, got {max_error}")
    if target_speedup is not None and not target_speedup >= 1.0:
        raise F3Error(f"--target-speedup must be >= 1, got {target_speedup}")
    full = any(unit.spatiotemporal for unit in units)
    if actions is None:
        actions = FULL_ATTENTION_ACTIONS if full else ("drop", "reuse", "heads")
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions:
        raise F3Error(f"search actions must be among {', '.join(ACTIONS)}, got {', '.join(actions) or 'none'}")
    if not prompts:
        raise F3Error("--search needs at least one prompt (--prompts)")
    periods = tuple(reuse_periods) if reuse_periods else (reuse_period,)
    if "reuse" in actions and not (all(isinstance(k, int) and not isinstance(k, bool) and 2 <= k <= 64 for k in periods)
                                   and len(set(periods)) == len(periods)):
        raise F3Error(f"reuse periods must be distinct integers in [2, 64], got {', '.join(map(str, periods))}")
    if full and "heads" in actions:
        raise F3Error("--actions heads does not apply to full 3-D attention; use drop, reuse and window")
    if "window" in actions and not full:
        raise F3Error("window actions need full 3-D attention (Wan, CogVideoX); this model has temporal attention")
    if "window" in actions and not (windows and all(isinstance(w, int) and not isinstance(w, bool) and w >= 0
                                                    for w in windows) and len(set(windows)) == len(windows)):
        raise F3Error(f"--windows must be distinct frame distances >= 0, got {', '.join(map(str, windows)) or 'none'}")
    # "reuse" stands for one action per period (reuse:K), "window" for one per frame distance (window:W)
    expand = {"reuse": [f"reuse:{k}" for k in periods], "window": [f"window:{w}" for w in windows]}
    actions = tuple(a for action in actions for a in expand.get(action, [action]))
    log = log or (lambda message: None)
    ranks = group or Group()  # (`group` below is a stage's steps)
    started = time.perf_counter()
    base = make_plan(stats, 0.0, "block", criterion, stages)  # spans and scores, nothing pruned
    groups = split_steps(len(stats.timesteps), stages)
    blocks = [block.id for block in stats.blocks]
    head_order = {}  # per stage: each unit's heads, lowest score first
    for number, group in enumerate(groups):
        for unit in units:
            if full:  # windows take every head; there is no head order to keep
                head_order[(number, unit.id)] = list(range(unit.heads))
                continue
            scores = criteria.head_scores(stats, unit.id, base.criterion, group)
            head_order[(number, unit.id)] = [int(h) for h in torch.argsort(scores, stable=True)]
    runner = _Runner(model, stats, prompts, units, ranks)

    def with_action(plan: PruningPlan, number: int, block: str, action: str) -> PruningPlan:
        trial = copy.deepcopy(plan)
        _apply(trial.stages[number], block, action, units, {u.id: head_order[(number, u.id)] for u in units},
               reuse_period)
        return trial

    singles = []  # (error per FLOP-speedup gained, stage, block, action, error)
    for number in range(stages):
        for block in blocks:
            for action in actions:
                trial = with_action(base, number, block, action)
                gain = predicted_speedup(trial, cost) - 1.0
                if gain <= 0:
                    continue
                error = runner.error(trial)
                singles.append((error / gain, number, block, action, error, gain))
                log(f"  alone: stage {number} {action:<5} {block}: error {error:.4f}, predicted {1 + gain:.3f}x")
    singles.sort(key=lambda s: (s[0], s[1], blocks.index(s[2]), actions.index(s[3])))

    plan, steps, decided = base, [], {}  # (stage, block) -> FLOP gain of its accepted action alone
    reached = 1.0
    # pass 1: one action per (stage, block), the first that fits; pass 2 (only while a target speedup
    # is still out of reach): replace an accepted action by one that removes more (reuse -> drop)
    for upgrade in (False, True):
        if upgrade and (target_speedup is None or reached >= target_speedup):
            break
        for _, number, block, action, alone, gain in singles:
            if target_speedup is not None and reached >= target_speedup:
                break
            if (max_error is not None and alone > max_error) or (
                    (number, block) in decided and (not upgrade or gain <= decided[(number, block)])):
                continue
            trial = with_action(plan, number, block, action)
            error = runner.error(trial)
            if max_error is not None and error > max_error:
                continue
            plan, reached = trial, predicted_speedup(trial, cost)
            decided[(number, block)] = gain
            steps.append(Step(number, block, action, error, reached))
            log(f"accept: stage {number} {action:<5} {block}: error {error:.4f}, predicted {reached:.3f}x")
    if target_speedup is not None and reached < target_speedup:
        within = f" within --max-error {max_error:g}" if max_error is not None else ""
        raise F3Error(f"--target-speedup {target_speedup:g} is out of reach{within}: the search got to {reached:.3f}x; "
                      "allow more error or ask for less")
    for stage in plan.stages:
        stage.drop_blocks.sort(key=blocks.index)
        stage.reuse = {b: stage.reuse[b] for b in sorted(stage.reuse, key=blocks.index)}
        order = [u.id for u in units]
        stage.prune_heads = {u: stage.prune_heads[u] for u in sorted(stage.prune_heads, key=order.index)}
        stage.windows = {u: stage.windows[u] for u in sorted(stage.windows, key=order.index)}
    final_error = steps[-1].error if steps else 0.0
    plan.ratio = [round(sum(1 for pair in decided if pair[0] == n) / len(blocks), 6) for n in range(stages)]
    plan.search = {
        "max_error": max_error, "target_speedup": target_speedup,
        "actions": list(actions),
        "prompts": len(prompts), "error": round(final_error, 6), "predicted_speedup": round(reached, 6),
        "evaluations": runner.calls, "seconds": round(time.perf_counter() - started, 3),
        "accepted": [s.to_dict() for s in steps],
        "precision": model.precision,
    }
    return plan, steps
