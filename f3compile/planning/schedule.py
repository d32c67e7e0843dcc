"""Plans with a speed budget: rank (unit, stage) pairs together, prune until a predicted speedup.

`--ratio` prunes the same fraction in every stage (or a given fraction per stage). A budget plan
instead lets the stages compete: every (unit, stage) pair gets the unit's score on that stage's
own steps, the pairs are pruned from the lowest score up, and selection stops as soon as the
counted, trajectory-weighted FLOP-predicted speedup reaches the target. A stage whose units do
little temporal work (late denoising steps, typically) thus gives up more than one whose units
matter. Stages are weighted by their share of the calibration's steps, as `inspect` weights them.
"""

from __future__ import annotations

from ..calibration import criteria
from ..calibration.stats import CalibrationStats
from ..errors import F3Error
from .cost import ModelCost
from .plan import PruningPlan, _is_number, make_plan, split_steps

BUDGET_GRANULARITIES = ("block", "attention", "head", "window")  # frame pruning removes too few FLOPs to budget


def predicted_speedup(plan: PruningPlan, cost: ModelCost, steps: int | None = None) -> float:
    """Trajectory-weighted FLOP-predicted speedup of `plan` (stages weighted by their steps)."""
    steps = steps or plan.calibration.get("steps") or len(plan.stages)
    groups = split_steps(max(steps, len(plan.stages)), len(plan.stages))
    total_steps = sum(len(g) for g in groups)
    removed = sum(cost.stage_removed(stage, len(g))[0] * len(g) for stage, g in zip(plan.stages, groups)) / total_steps
    return cost.total_flops / max(1.0, cost.total_flops - removed)


def make_target_plan(
    stats: CalibrationStats,
    cost: ModelCost,
    target_speedup: float,
    granularity: str = "block",
    criterion: str = criteria.DEFAULT_CRITERION,
    stages: int = 2,
    seed: int = 0,
    reuse: int | None = None,
    window: int | None = None,
) -> PruningPlan:
    """The plan that reaches `target_speedup` (FLOP-predicted, over the trajectory) by pruning the
    lowest-scored (unit, stage) pairs first — at granularity window, by windowing the (head, stage)
    pairs with the least attention outside ±`window` frames first. Raises `F3Error` when even pruning
    every unit of every stage cannot reach it."""
    if not _is_number(target_speedup) or target_speedup < 1.0:
        raise F3Error(f"--target-speedup must be a number >= 1, got {target_speedup}")
    if granularity not in BUDGET_GRANULARITIES:
        raise F3Error(f"--target-speedup plans prune at {', '.join(BUDGET_GRANULARITIES)} granularity, not {granularity}")
    if granularity == "window":  # spans and scores; nothing windowed yet
        plan = make_plan(stats, 0.0, granularity, criterion, stages, seed=seed, window=window)
    else:  # spans and scores; nothing pruned
        plan = make_plan(stats, 0.0, granularity, criterion, stages, seed=seed, reuse=reuse)
    criterion = plan.criterion
    units, blocks = stats.units, stats.blocks
    order = {unit.id: index for index, unit in enumerate(units)}
    groups = split_steps(len(stats.timesteps), stages)
    candidates = []  # (score, stage, module order, item)
    for number, group in enumerate(groups):
        if granularity == "block":
            for block in blocks:
                candidates.append((criteria.block_score(stats, block.id, criterion, group), number, order[block.units[0]], block.id))
        elif granularity == "attention":
            for unit in units:
                candidates.append((criteria.unit_score(stats, unit.id, criterion, group), number, order[unit.id], unit.id))
        elif granularity == "window":
            for unit in units:
                for head, score in enumerate(criteria.window_scores(stats, unit.id, window, criterion, group)):
                    candidates.append((float(score), number, order[unit.id] * 10_000 + head, (unit.id, head)))
        else:
            for unit in units:
                for head, score in enumerate(criteria.head_scores(stats, unit.id, criterion, group)):
                    candidates.append((float(score), number, order[unit.id] * 10_000 + head, (unit.id, head)))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))

    weights = [len(g) for g in groups]
    removed = [0.0] * stages

    def speedup() -> float:
        mean_removed = sum(r * w for r, w in zip(removed, weights)) / sum(weights)
        return cost.total_flops / max(1.0, cost.total_flops - mean_removed)

    heads_of = {unit.id: unit.heads for unit in units}
    counts = [0] * stages
    for _, number, _, item in candidates:
        if speedup() >= target_speedup:
            break
        stage = plan.stages[number]
        if granularity == "block" and reuse is not None:
            stage.reuse[item] = reuse
        elif granularity == "block":
            stage.drop_blocks.append(item)
        elif granularity == "attention":
            stage.drop_attention.append(item)
        elif granularity == "window":
            unit_id, head = item
            stage.windows.setdefault(unit_id, [None] * heads_of[unit_id])[head] = window
        else:
            unit_id, head = item
            stage.prune_heads.setdefault(unit_id, []).append(head)
        counts[number] += 1
        removed[number] = cost.stage_removed(stage, weights[number])[0]
    reached = speedup()
    if reached < target_speedup:
        action = f"reusing (every {reuse} steps)" if reuse is not None else "pruning"
        raise F3Error(f"--target-speedup {target_speedup:g} is out of reach: {action} every {granularity} in every stage "
                      f"predicts {reached:.3f}x; ask for less or prune at a coarser granularity")
    block_order = [b.id for b in blocks]
    for stage in plan.stages:  # module order, as `make_plan` writes them
        stage.drop_blocks.sort(key=block_order.index)
        stage.reuse = {b: stage.reuse[b] for b in sorted(stage.reuse, key=block_order.index)}
        stage.drop_attention.sort(key=order.__getitem__)
        stage.prune_heads = {u: sorted(stage.prune_heads[u]) for u in sorted(stage.prune_heads, key=order.__getitem__)}
        stage.windows = {u: stage.windows[u] for u in sorted(stage.windows, key=order.__getitem__)}
    size = {"block": len(blocks), "attention": len(units), "head": sum(u.heads for u in units),
            "window": sum(u.heads for u in units)}[granularity]
    plan.ratio = [round(count / size, 6) for count in counts]
    plan.budget = {"target_speedup": float(target_speedup), "predicted_speedup": round(reached, 6)}
    return plan
