"""`plan --search`: choose per (stage, temporal block) the action whose *measured* effect is smallest.

Criterion plans rank units by what calibration saw; a searched plan checks its choices against the
one thing a user cares about, the video, by running them. Actions per (stage, block): drop the block,
reuse it (computed at every k-th step of the stage, its residual re-added in between; one action
per period given: `reuse_periods`), window every head of its attention (full 3-D attention), or
prune the lower-scored half of every attention's heads in it. Over the calibration prompts (their
seeds, steps, guidance and shapes), within a budget of denoiser calls (`search_budget` sampling
loops per prompt, 20 by default, whatever the model's blocks and actions):

1. the dense loop, keeping its state before the steps the estimates need (`_Runner`);
2. every single action alone, *estimated on the dense trajectory*: at a few steps spread over its
   stage (as many as half the remaining budget allows), the denoiser runs with the action at the
   dense latents and the scheduler takes the step; the mean change of the next latents, times the
   steps the action touches, relative to the dense final latents, estimates its error. A reuse of
   period K runs K steps in a row there (the first computes the block) and is measured where it
   reuses. Where not even one step per action fits, the actions the calibration's statistics rank
   best within each kind are estimated and the rest left out (`screened`);
3. the moves, in order of estimated error per FLOP removed (cheapest to lose first): an action
   applies while its (stage, block) has none, so a block whose first action broke the bound is
   tried with its next; with a target speedup, then the same order again, where an action applies
   if it removes more than the one its (stage, block) has (reuse:2 -> reuse:4, reuse -> drop);
4. whole sampling loops confirm them, measured together with what is accepted: 1, 2, 4, ... more
   moves while the error stays within `max_error` (with a target speedup, first the fewest that
   reach it), then a bisection finds the longest run of them that does; the move after it is
   skipped and the search goes on from there, while the budget lasts;
5. exchanges, with the budget left: the plans one or two (stage, block) pairs away from the
   accepted one (an action given up or set to another), least estimated change of error first, each
   measured whole and kept when better (`_exchanges`): less error at the target (without one, at no
   lower predicted speedup), or more predicted speedup within `max_error` without a target.

Every accepted step is reported with its estimate, the predicted speedup and, where the plan up
to it was measured whole, its measured error (an exchange's changes follow the moves, marked, the
error on the last); replayed in order they give the plan, whose final error is always measured. All of it
is recorded in the plan (`search`, with the denoiser calls spent per prompt), so the plan carries a
known deviation for any model: no probe, no labels. The search runs offline once; the plan it writes
is static like every other plan. Under torchrun the ranks split the prompts (`_Runner`); the
accepted steps and the plan are those of one process.
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
from ..sampling import StepState, _step_kwargs, denoise_loop, guided_step, initial_latents
from .cost import ModelCost
from ..inplace import install
from .plan import PruningPlan, Stage, make_plan, split_steps
from .schedule import predicted_speedup

DEFAULT_BUDGET = 20.0  # denoiser calls per prompt, in sampling loops: the dense one, the estimates, the measured plans
ACTIONS = ("drop", "reuse", "heads", "window")
FULL_ATTENTION_ACTIONS = ("drop", "reuse", "window")  # head pruning is not defined for full 3-D attention here
DENSE = "dense"  # an exchange's step that leaves a (stage, block) without an action


@dataclass
class Step:
    stage: int
    block: str
    action: str
    error: float | None  # measured on the final latents with every step up to this one; None: not measured
    predicted_speedup: float
    estimate: float = 0.0  # the action's error alone, estimated on the dense trajectory
    exchange: bool = False  # one of the (one or two) changes of an exchange, not a move of the ranking

    def to_dict(self) -> dict:
        return {"stage": self.stage, "block": self.block, "action": self.action,
                "error": None if self.error is None else round(self.error, 6),
                "predicted_speedup": round(self.predicted_speedup, 6), "estimate": round(self.estimate, 6),
                **({"exchange": True} if self.exchange else {})}


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
    if action == DENSE:  # an exchange gave the block's action up
        return
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
    """Final latents of the calibration prompts under a plan (eager, stage-switched), and one step's
    effect on the dense trajectory. Prompt i starts from the noise it started from in calibration
    (seed + i). Under torchrun each rank runs its span of the prompts and the per-prompt numbers are
    gathered in prompt order, so every rank takes the mean of the same numbers in the same order as
    one process does, and makes the same choices. `calls` counts the denoiser calls per prompt."""

    def __init__(self, model: VideoModel, stats: CalibrationStats, prompts: list[str], units: list[TemporalUnit],
                 group: Group | None = None, keep: set[int] = frozenset()):
        from ..calibration.calibrate import prompt_generator

        meta = stats.meta
        self.model, self.units, self.group = model, units, group or Group()
        self.steps, self.guidance = int(meta["steps"]), float(meta["guidance_scale"])
        shapes = meta["shapes"]
        video = VideoShapes(1, int(shapes["frames"]), int(shapes["height"]), int(shapes["width"]))
        self.shape = model.latent_shape(video)
        self.counts = [len(Part(rank, self.group.size).span(len(prompts), "prompts")) for rank in range(self.group.size)]
        mine = self.group.part.span(len(prompts), "prompts")
        device = self.group.device
        self.starts = [initial_latents(self.shape, model.scheduler, prompt_generator(int(meta["seed"]), i),
                                       model.native_layout).to(device) for i in mine]
        # per prompt: (cond, uncond, an image-to-video model's condition latents or None)
        self.context = [tuple(None if x is None else x.to(device) for x in model.encode_conditioned([prompts[i]], video))
                        for i in mine]
        self.calls, self.loops = 0, 0
        self.keep = set(keep)
        self.states: list[dict] = []  # per prompt: step index -> (StepState before it, generator state, latents after it)
        self.dense = self.run(None, record=True)

    def _denoise(self, *args):
        self.calls += 1
        return self.model.denoise(*args)

    def run(self, plan: PruningPlan | None, record: bool = False) -> list[torch.Tensor]:
        """Final latents of every prompt with `plan` applied in place (`f3compile.apply`'s path: what
        the search measures is what a pipeline and the build run, at the pruned program's memory).
        `record`: keep the loop's state before each step in `keep` and the latents after it."""
        finals = []
        applied = install(self.model, plan, self.units) if plan is not None else None
        try:
            for start, (cond, uncond, condition) in zip(self.starts, self.context):
                if applied is not None:
                    applied.reset()  # each prompt is a sampling loop of its own
                kept: dict = {}
                if record:
                    self.states.append(kept)

                generator = torch.Generator().manual_seed(0)  # DDIM with eta 0 draws nothing; other schedulers: fixed

                def on_state(state: StepState, kept=kept, generator=generator) -> None:
                    if state.index - 1 in kept:  # the latents the previous step made
                        kept[state.index - 1] = (*kept[state.index - 1][:2], state.latents.cpu())
                    if state.index in self.keep:  # and the noise a stochastic step draws from here
                        kept[state.index] = (_placed(copy.deepcopy(state), torch.device("cpu")),
                                             generator.get_state(), None)

                final = denoise_loop(self._denoise, self.model.scheduler, start.clone(), cond, uncond, self.steps,
                                     self.guidance, generator, on_state=on_state if record else None,
                                     condition=condition, family=self.model.family)
                for index in [i for i in kept if kept[i][2] is None]:  # the last step's
                    kept[index] = (*kept[index][:2], final.cpu())
                finals.append(final)
        finally:
            if applied is not None:
                applied.remove()
        self.loops += 1
        return finals

    def error(self, plan: PruningPlan) -> float:
        """The mean relative L2 error of the final latents under `plan` (a whole loop per prompt)."""
        finals = self.run(plan)
        errors = [float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(finals, self.dense)]
        errors = self.group.gather_values(errors, self.counts, "measuring a candidate plan")
        return sum(errors) / len(errors)

    def step_change(self, plan: PruningPlan, runs: list[tuple[list[int], list[int]]]) -> float:
        """The mean over prompts of how far `plan` moves one step of the dense trajectory: for each
        (`calls`, `measured`) the denoiser runs at the dense latents of the steps in `calls`, in order
        (a reused block's residual comes from an earlier one), and at each step of `measured` the
        scheduler's next latents are compared with the dense ones. Returns the mean over runs of the
        mean ||Δ latents|| per measured step, relative to the dense final latents' norm."""
        generator = torch.Generator()
        applied = install(self.model, plan, self.units)
        changes = []
        try:
            for kept, final, (cond, uncond, condition) in zip(self.states, self.dense, self.context):
                total = 0.0
                for calls, measured in runs:
                    applied.reset()
                    per_step = []
                    for index in calls:  # the steps before a measured one only fill reused blocks' residuals
                        before, noise, after = kept[index]
                        state = _placed(copy.deepcopy(before), final.device)  # the scheduler steps in place
                        generator.set_state(noise)
                        moved, _ = guided_step(self._denoise, state, state.scheduler.timesteps, cond, uncond,
                                               self.guidance, _step_kwargs(state.scheduler, generator, 0.0),
                                               self.model.native_layout, condition)
                        if index in measured:
                            per_step.append(float((moved - after.to(moved.device)).norm()))
                    total += sum(per_step) / max(1, len(per_step))
                changes.append(total / max(1, len(runs)) / float(final.norm().clamp_min(1e-12)))
        finally:
            applied.remove()
        changes = self.group.gather_values(changes, self.counts, "measuring a candidate on the dense trajectory")
        return sum(changes) / len(changes)


def _placed(state: StepState, device: torch.device) -> StepState:
    """`state` (a copy of its own) with its latents and its scheduler's tensors on `device`: the search
    keeps the dense trajectory's states on the host, a few latents each, not beside the model."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(move(v) for v in value)
        return value

    state.latents = state.latents.to(device)
    if state.previous_x0 is not None:
        state.previous_x0 = state.previous_x0.to(device)
    state.timestep = state.timestep.to(device) if isinstance(state.timestep, torch.Tensor) else state.timestep
    for name, value in vars(state.scheduler).items():
        setattr(state.scheduler, name, move(value))
    return state


def _period(action: str) -> int:
    return int(action.split(":", 1)[1]) if action.startswith("reuse:") else 1


def _runs(action: str, group: list[int], samples: int) -> list[tuple[list[int], list[int]]]:
    """Where an action is measured on the dense trajectory of its stage (`group`: its step indices):
    `samples` steps spread evenly over the stage; a reuse of period K runs K steps in a row there,
    the first computing the block, and is measured at the K - 1 that reuse it."""
    count = min(samples, len(group))
    period, runs = _period(action), []
    for position in sorted({int((j + 0.5) * len(group) / count) for j in range(count)}):
        if period == 1:
            runs.append(([group[position]], [group[position]]))
            continue
        first = max(0, min(position - period + 1, len(group) - period))
        calls = group[first:first + period]
        if (calls, calls[1:]) not in runs:
            runs.append((calls, calls[1:]))
    return runs


def _prior(stats: CalibrationStats, units: list[TemporalUnit], number_steps: list[int], block: str, action: str,
           criterion: str) -> float:
    """What the calibration says an action costs, to choose which to measure when not all fit."""
    if action.startswith("window:"):
        window = int(action.split(":", 1)[1])
        ids = [u.id for u in units if u.block == block]
        return float(sum(float((1 - criteria.window_mass(stats, i, window, number_steps)).mean()) for i in ids)
                     / max(1, len(ids)))
    if action.startswith("reuse:"):
        try:
            return criteria.reuse_score(stats, block, number_steps) * _period(action)
        except F3Error:  # no residual-change statistics: rank by position only
            return 0.0
    return criteria.block_score(stats, block, criterion, number_steps)


def _sampling(candidates: list, groups: list[list[int]], loop: int, budget: float, stats: CalibrationStats,
              units: list[TemporalUnit], criterion: str) -> tuple[int, list, int]:
    """How many steps per stage each candidate is measured at, so that the estimates take at most
    half of what the budget leaves after the dense loop; when not even one step each fits, the
    candidates the calibration ranks best within each action (interleaved across actions) that fit.
    Returns (samples, the candidates measured, how many were screened out)."""
    calls = (budget - 1) * loop / 2
    per_sample = sum(_period(action) for _, _, action, _ in candidates)
    samples = min(max(len(g) for g in groups), int(calls // max(1, per_sample)))
    if samples >= 1:
        return samples, candidates, 0
    ranked = {}
    for candidate in candidates:
        number, block, action, _ = candidate
        ranked.setdefault(action, []).append((_prior(stats, units, groups[number], block, action, criterion), candidate))
    order = sorted(((rank, position, candidate) for position, (action, listed) in enumerate(ranked.items())
                    for rank, (_, candidate) in enumerate(sorted(listed, key=lambda item: item[0]))),
                   key=lambda item: item[:2])
    kept, spent = [], 0
    for _, _, candidate in order:
        if spent + _period(candidate[2]) > calls:
            break
        kept.append(candidate)
        spent += _period(candidate[2])
    return 1, kept, len(candidates) - len(kept)


def _share(options: dict, pair: tuple, action: str) -> float:
    """Of the dense FLOPs, the share `action` removes at `pair` alone (FLOP-speedup gained g: 1 - 1/(1 + g));
    FLOPs removed by the actions of different pairs add up."""
    return 0.0 if action == DENSE else 1.0 - 1.0 / (1.0 + options[pair][action][1])


def _exchanges(assign: dict, options: dict, order: Callable) -> list[tuple[float, float, tuple]]:
    """The plans one or two (stage, block) pairs away from `assign` ((stage, block) -> action; `options`:
    (stage, block) -> action -> (estimated error alone, FLOP-speedup gained alone)), each as (the
    estimated change of error, the change of the share of the dense FLOPs removed, its changes
    ((stage, block), action or DENSE)): the least estimated error first, then the most FLOPs removed."""
    def estimate(pair, action):
        return 0.0 if action == DENSE else options[pair][action][0]

    changes = [(pair, action, estimate(pair, action) - estimate(pair, assign.get(pair, DENSE)),
                _share(options, pair, action) - _share(options, pair, assign.get(pair, DENSE)))
               for pair in sorted(options, key=order) for action in (DENSE, *options[pair])
               if action != assign.get(pair, DENSE)]
    found = [(d, r, ((pair, action),)) for pair, action, d, r in changes]
    found += [(d1 + d2, r1 + r2, ((p1, a1), (p2, a2)))
              for i, (p1, a1, d1, r1) in enumerate(changes) for p2, a2, d2, r2 in changes[i + 1:] if p2 != p1]
    return sorted(found, key=lambda c: (c[0], -c[1]))


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
    search_budget: float = DEFAULT_BUDGET,
) -> tuple[PruningPlan, list[Step]]:
    """The searched plan and its accepted steps (see the module docstring). With `group` (torchrun's
    ranks) the prompts are split across the ranks; the plan and its path are those of one process."""
    if max_error is None and target_speedup is None:
        raise F3Error("--search needs --max-error E, --target-speedup S, or both")
    if max_error is not None and not max_error > 0:
        raise F3Error(f"--max-error must be > 0, got {max_error}")
    if target_speedup is not None and not target_speedup >= 1.0:
        raise F3Error(f"--target-speedup must be >= 1, got {target_speedup}")
    from ..models.base import JOINT_FAMILIES

    full = any(unit.spatiotemporal for unit in units)
    joint = model.family in JOINT_FAMILIES  # blocks of video and text states: windows only
    if actions is None:
        actions = ("window",) if joint else FULL_ATTENTION_ACTIONS if full else ("drop", "reuse", "heads")
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
    if joint and any(a in actions for a in ("drop", "reuse")):
        raise F3Error(f"--actions drop and reuse do not apply to {model.family} (its blocks return text and video "
                      "states); use window")
    if "window" in actions and not full:
        raise F3Error("window actions need full 3-D attention (Wan, CogVideoX, HunyuanVideo 1.5); this model has "
                      "temporal attention")
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

    def with_action(plan: PruningPlan, number: int, block: str, action: str) -> PruningPlan:
        trial = copy.deepcopy(plan)
        _apply(trial.stages[number], block, action, units, {u.id: head_order[(number, u.id)] for u in units},
               reuse_period)
        return trial

    loop = int(stats.meta["steps"])  # denoiser calls of one sampling loop per prompt
    if not search_budget >= 2:
        raise F3Error(f"--search-budget must be at least 2 sampling loops (the dense one and one measured plan), "
                      f"got {search_budget:g}")
    candidates = []  # (stage, block, action, FLOP-speedup gained alone)
    for number in range(stages):
        for block in blocks:
            for action in actions:
                gain = predicted_speedup(with_action(base, number, block, action), cost) - 1.0
                if gain > 0:
                    candidates.append((number, block, action, gain))
    samples, candidates, screened = _sampling(candidates, groups, loop, search_budget, stats, units, base.criterion)
    keep = {index for number, block, action, _ in candidates for calls, _ in _runs(action, groups[number], samples)
            for index in calls}
    runner = _Runner(model, stats, prompts, units, ranks, keep)

    singles = []  # (estimated error per FLOP-speedup gained, stage, block, action, estimate, gain)
    for number, block, action, gain in candidates:
        runs = _runs(action, groups[number], samples)
        period = _period(action)  # a reuse touches only the steps that reuse, the other actions every step
        affected = len(groups[number]) * ((period - 1) / period if period > 1 else 1)
        estimate = runner.step_change(with_action(base, number, block, action), runs) * affected
        singles.append((estimate / gain, number, block, action, estimate, gain))
        log(f"  alone: stage {number} {action:<5} {block}: estimated error {estimate:.4f}, predicted {1 + gain:.3f}x")
    singles.sort(key=lambda s: (s[0], s[1], blocks.index(s[2]), actions.index(s[3])))

    # the moves, in ranking order: an action applies while its (stage, block) has none; with a target
    # speedup, the ranking again, where an action applies if it removes more than the one its
    # (stage, block) has (reuse -> drop)
    moves = [(number, block, action, estimate, gain, False) for _, number, block, action, estimate, gain in singles]
    if target_speedup is not None:
        moves += [(number, block, action, estimate, gain, True) for _, number, block, action, estimate, gain in singles]

    def sequence(start: int, decided: dict) -> list[int]:
        """The moves from `start` on that apply, each deciding its (stage, block) for the next."""
        decided, found = dict(decided), []
        for index in range(start, len(moves)):
            number, block, _, _, gain, upgrade = moves[index]
            if (number, block) not in decided or (upgrade and gain > decided[(number, block)]):
                found.append(index)
                decided[(number, block)] = gain
        return found

    def plan_of(chosen: list[int]) -> PruningPlan:
        plan = base
        for index in chosen:
            plan = with_action(plan, *moves[index][:3])
        return plan

    errors: dict[tuple[int, ...], float] = {(): 0.0}

    def measure(chosen: list[int]) -> float:
        error = runner.error(plan_of(chosen))
        errors[tuple(chosen)] = error
        log(f"measured: {len(chosen)} move(s), error {error:.4f}, predicted {predicted_speedup(plan_of(chosen), cost):.3f}x")
        return error

    def affordable() -> bool:
        return runner.calls / max(1, len(runner.starts)) + loop <= search_budget * loop + 1e-9

    chosen, decided, position, reached, spent = [], {}, 0, 1.0, False

    def fits(count: int) -> bool:  # the accepted moves and the next `count` ones, measured whole
        return measure(chosen + pending[:count]) <= max_error

    while target_speedup is None or reached < target_speedup:
        pending = sequence(position, decided)
        if not pending:
            break
        limit = len(pending)
        if target_speedup is not None:  # the fewest further moves that reach it
            limit = next((j for j in range(1, limit + 1)
                          if predicted_speedup(plan_of(chosen + pending[:j]), cost) >= target_speedup), limit)
        if max_error is None:
            chosen += pending[:limit]
            decided.update((moves[index][:2], moves[index][4]) for index in pending[:limit])
            break
        # the most further moves that stay within the bound: `low` known to, `high` known not to
        low, high = 0, None
        if target_speedup is not None and limit > 1:  # all that reach the target, first
            if not affordable():
                spent = True
                break
            if fits(limit):
                low = limit
            else:
                high = limit
        size = 1
        while low < limit and high is None:  # then 1, 2, 4, ... more, as long as they fit
            if not affordable():
                break
            count = min(low + size, limit)
            if fits(count):
                low, size = count, size * 2
            else:
                high = count
        while high is not None and high - low > 1 and affordable():  # bisect between
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        for index in pending[:low]:
            decided[moves[index][:2]] = moves[index][4]
        chosen += pending[:low]
        reached = predicted_speedup(plan_of(chosen), cost)
        if high is not None and high - low == 1:
            position = pending[low] + 1  # that move broke the bound: go on without it
        elif low == limit:
            position = pending[low - 1] + 1
        else:  # out of budget: what is known to fit
            spent = True
            break
    plan = plan_of(chosen)
    reached = predicted_speedup(plan, cost)
    if tuple(chosen) not in errors:
        measure(chosen)
    steps = []
    for count, index in enumerate(chosen, 1):
        number, block, action, estimate = moves[index][:4]
        prefix = chosen[:count]
        steps.append(Step(number, block, action, errors.get(tuple(prefix)),
                          predicted_speedup(plan_of(prefix), cost), estimate))
        log(f"accept: stage {number} {action:<5} {block}: estimated error {estimate:.4f}, "
            f"predicted {steps[-1].predicted_speedup:.3f}x"
            + (f", measured {steps[-1].error:.4f}" if steps[-1].error is not None else ""))

    # exchanges, with the budget the moves left: the plans one or two (stage, block) pairs away from
    # the accepted one, the least estimated error first, each measured whole and kept when it is
    # better: less error at the target (or, without one, at no lower predicted speedup), or more
    # predicted speedup within --max-error without a target
    options: dict = {}
    for _, number, block, action, estimate, gain in singles:
        options.setdefault((number, block), {})[action] = (estimate, gain)

    def assignment(indices) -> dict:  # (stage, block) -> action; the last move of each pair holds
        return {moves[index][:2]: moves[index][2] for index in indices}

    assign = assignment(chosen)
    error = errors[tuple(chosen)]
    seen = {frozenset(assignment(key).items()) for key in errors}  # every plan the moves measured

    def plan_from(pairs: dict) -> PruningPlan:
        trial = base
        for (number, block), action in pairs.items():
            trial = with_action(trial, number, block, action)
        return trial

    def better(candidate: float, speedup: float) -> bool:
        if max_error is not None and candidate > max_error:
            return False
        if target_speedup is not None:
            return speedup >= target_speedup and (reached < target_speedup or candidate < error)
        return speedup > reached + 1e-9 or candidate < error

    def removed_share(pairs: dict) -> float:  # of the dense FLOPs, what the actions remove
        return sum(_share(options, pair, action) for pair, action in pairs.items())

    removed = removed_share(assign)
    while affordable():
        if target_speedup is not None and reached >= target_speedup and error <= 0.0:
            break  # the target holds without error: nothing measures better
        need = target_speedup if target_speedup is not None else reached
        trial = None
        for _, more, changes in _exchanges(assign, options, lambda pair: (pair[0], blocks.index(pair[1]))):
            if 1.0 / max(1e-9, 1.0 - removed - more) < need - 1e-6:
                continue  # FLOPs removed add up: a plan below the speedup it needs is not built
            pairs = dict(assign)
            for pair, action in changes:
                if action == DENSE:
                    pairs.pop(pair)
                else:
                    pairs[pair] = action
            state = frozenset(pairs.items())
            if state in seen:
                continue
            seen.add(state)
            candidate = plan_from(pairs)
            speedup = predicted_speedup(candidate, cost)
            if speedup >= need - 1e-9:
                trial = (changes, pairs, candidate, speedup)
                break
        if trial is None:
            break
        changes, pairs, candidate, speedup = trial
        measured = runner.error(candidate)
        described = ", ".join(f"stage {number} {block} {assign.get((number, block), DENSE)} -> {action}"
                              for (number, block), action in changes)
        log(f"exchange: {described}: error {measured:.4f}, predicted {speedup:.3f}x")
        if not better(measured, speedup):
            continue
        for count, ((number, block), action) in enumerate(changes, 1):
            if action == DENSE:
                assign.pop((number, block))
            else:
                assign[(number, block)] = action
            last = count == len(changes)  # only the whole exchange was measured
            steps.append(Step(number, block, action, measured if last else None,
                              speedup if last else predicted_speedup(plan_from(assign), cost),
                              0.0 if action == DENSE else options[(number, block)][action][0], exchange=True))
        removed = removed_share(assign)
        error, reached, plan = measured, speedup, candidate
        log(f"accept: {described}: error {error:.4f}, predicted {reached:.3f}x")
    spent = spent or not affordable()
    if target_speedup is not None and reached < target_speedup:
        within = f" within --max-error {max_error:g}" if max_error is not None else ""
        if spent:
            within += f" and --search-budget {search_budget:g}"
        raise F3Error(f"--target-speedup {target_speedup:g} is out of reach{within}: the search got to {reached:.3f}x; "
                      + ("allow more error, a larger budget, or ask for less" if spent else "allow more error or ask for less"))
    for stage in plan.stages:
        stage.drop_blocks.sort(key=blocks.index)
        stage.reuse = {b: stage.reuse[b] for b in sorted(stage.reuse, key=blocks.index)}
        order = [u.id for u in units]
        stage.prune_heads = {u: stage.prune_heads[u] for u in sorted(stage.prune_heads, key=order.index)}
        stage.windows = {u: stage.windows[u] for u in sorted(stage.windows, key=order.index)}
    final_error = error
    plan.ratio = [round(sum(1 for pair in assign if pair[0] == n) / len(blocks), 6) for n in range(stages)]
    plan.search = {
        "max_error": max_error, "target_speedup": target_speedup,
        "actions": list(actions),
        "prompts": len(prompts), "error": round(final_error, 6), "predicted_speedup": round(reached, 6),
        "evaluations": runner.loops - 1, "seconds": round(time.perf_counter() - started, 3),
        "calls": round(runner.calls / max(1, len(runner.starts)), 3), "loop_calls": loop, "budget": search_budget,
        "samples": samples, "screened": screened,
        "accepted": [s.to_dict() for s in steps],
        "precision": model.precision,
    }
    return plan, steps
