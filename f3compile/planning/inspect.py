"""Render a plan as a table: per stage and unit what is kept and pruned, and what it saves."""

from __future__ import annotations

from typing import Any

from .plan import PruningPlan, split_steps


def _human(n: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def window_text(windows: list) -> str:
    """'2 heads at W=0, 1 at W=1, 1 dense' for one unit's per-head windows."""
    counts: dict = {}
    for window in windows:
        counts[window] = counts.get(window, 0) + 1
    parts = [f"{counts[w]} head{'s' if counts[w] > 1 else ''} at W={w}" for w in sorted(k for k in counts if k is not None)]
    if None in counts:
        parts.append(f"{counts[None]} dense")
    return "window: " + ", ".join(parts)


def _first_frame_text(entry: dict, windows: list) -> str:
    """For an image-to-video plan: how much of the windowed heads' attention from later frames to the
    first frame (the conditioning image) the windows hide, against what those frames give it."""
    rows = entry.get("first_frame")
    if not rows:
        return ""
    from ..calibration.criteria import hidden_first_frame

    windowed = [head for head, window in enumerate(windows) if window is not None]
    hidden = sum(hidden_first_frame(rows[head], windows[head]) for head in windowed) / max(1, len(windowed))
    given = sum(hidden_first_frame(rows[head], -1) for head in windowed) / max(1, len(windowed))
    return (f" (the conditioning first frame: later frames give it {given:.1%} of these heads' attention, "
            f"the windows hide {hidden:.1%})")


def _unit_ids(plan: PruningPlan) -> list[str]:
    return [uid for uid, entry in plan.scores.items() if entry["per_head"]]


def summarize(plan: PruningPlan, model=None, units=None, shapes=None, cost=None) -> dict[str, Any]:
    """Per-stage and total savings; FLOPs/params need the model (they are counted on it, or taken
    from `cost`, the model's `ModelCost` at `shapes`, when many plans are summarised)."""
    summary: dict[str, Any] = {"stages": []}
    if model is not None:
        from ..models.discovery import find_temporal_units
        from .cost import ModelCost

        units = units or (list(cost.units.values()) if cost is not None else find_temporal_units(model, shapes))
        plan.check_model(model, units)
        cost = cost or ModelCost.measure(model, units, shapes)
        summary.update(total_flops=cost.total_flops, total_params=cost.total_params, core_flops=cost.core_flops)
    steps = plan.calibration.get("steps") or len(plan.stages)
    groups = split_steps(max(steps, len(plan.stages)), len(plan.stages))
    weighted_flops = weighted_core = 0.0
    for stage, group in zip(plan.stages, groups):
        entry: dict[str, Any] = {"timesteps": list(stage.timesteps), "steps": len(group)}
        if cost is not None:
            flops, params = cost.stage_removed(stage, len(group))
            core = cost.core_removed(stage, len(group))
            entry.update(flops_removed=flops, params_removed=params, core_removed=core)
            weighted_flops += flops * len(group)
            weighted_core += core * len(group)
        summary["stages"].append(entry)
    if cost is not None:
        total_steps = sum(len(g) for g in groups)
        summary["trajectory_flops_removed"] = weighted_flops / total_steps
        summary["trajectory_core_removed"] = weighted_core / total_steps
        share = summary["trajectory_flops_removed"] / summary["total_flops"]
        summary["predicted_speedup"] = 1 / max(1e-9, 1 - share)
        summary["params_removed_any_stage"] = max(s["params_removed"] for s in summary["stages"])
    return summary


def render(plan: PruningPlan, model=None, shapes=None) -> str:
    """The text `f3compile inspect` prints. A plan made for another model is carried over by relative
    depth when `model` is an architecture preset (`carry_over`), and says so."""
    units, carried = None, None
    if model is not None:
        from ..models.discovery import find_temporal_units
        from ..models.registry import BUILTINS

        units = find_temporal_units(model, shapes)
        preset = model.spec.startswith("builtin:") and BUILTINS.get(model.spec[8:].split(",")[0]) is not None \
            and BUILTINS[model.spec[8:].split(",")[0]].group == "preset"
        if preset and plan.model.get("spec") == model.spec:  # the same preset (its weights count no FLOPs)
            plan.model["fingerprint"] = model.fingerprint
        elif preset and plan.model.get("fingerprint") != model.fingerprint:
            from .plan import carry_over

            carried = plan.model.get("spec")
            plan = carry_over(plan, units, model.spec)
            plan.model["fingerprint"] = model.fingerprint
    summary = summarize(plan, model, units, shapes)
    unit_ids = _unit_ids(plan)
    block_of = {}
    for block_id, entry in plan.scores.items():
        if not entry["per_head"]:
            for unit_id in unit_ids:
                if unit_id.startswith(block_id + "."):
                    block_of[unit_id] = block_id
    width = max(len(u) for u in unit_ids)
    lines = [
        f"plan: {plan.granularity} granularity, criterion {plan.criterion}, ratio {plan.ratio_text()}, "
        f"{len(plan.stages)} stage(s); model {plan.model.get('spec')}",
    ]
    if plan.window is not None:
        lines.append(f"windows: heads attend within ±{plan.window} frames of the query's frame (text keys stay visible)"
                     + (f"; every head keeping >= {plan.keep_mass:g} of its attention inside" if plan.keep_mass is not None else ""))
    if carried is not None:
        shape = shapes or model.shapes
        lines.append(f"carried over from {carried} to {model.spec} at {shape.frames}x{shape.height}x{shape.width} by "
                     "relative depth: each layer takes the plan of the layer at its depth, the same share of heads "
                     "at each window")
    if plan.budget is not None:
        lines.append(f"budget: target speedup {plan.budget['target_speedup']:g}x, FLOP-predicted "
                     f"{plan.budget['predicted_speedup']:.3f}x at selection")
    for number, (stage, info) in enumerate(zip(plan.stages, summary["stages"])):
        lines.append("")
        lines.append(f"stage {number}: timesteps {stage.timesteps[0]}..{stage.timesteps[1]} ({info['steps']} calibration steps), "
                     f"ratio {plan.stage_ratios()[number]:g}")
        lines.append(f"  {'unit':<{width}}  {'score':>7}  {'heads':>7}  {'frames':>7}  action")
        for unit_id in unit_ids:
            entry = plan.scores[unit_id]
            heads, frames = len(entry["per_head"]), len(entry["per_frame"])
            kept_heads, kept_frames = heads, frames
            if block_of.get(unit_id) in stage.drop_blocks:
                action, kept_heads, kept_frames = f"pruned (block {block_of[unit_id]})", 0, 0
            elif unit_id in stage.drop_blocks:
                action, kept_heads, kept_frames = "pruned (its own block)", 0, 0
            elif unit_id in stage.drop_attention:
                action, kept_heads, kept_frames = "pruned (attention)", 0, 0
            else:
                parts = []
                if unit_id in stage.prune_heads:
                    kept_heads = heads - len(stage.prune_heads[unit_id])
                    parts.append(f"prune heads {stage.prune_heads[unit_id]}")
                if unit_id in stage.keep_frames:
                    kept_frames = len(stage.keep_frames[unit_id])
                    parts.append(f"keep frames {stage.keep_frames[unit_id]}")
                if unit_id in stage.windows:
                    parts.append(window_text(stage.windows[unit_id]) + _first_frame_text(entry, stage.windows[unit_id]))
                block = unit_id if unit_id in stage.reuse else block_of.get(unit_id)
                if stage.reuse.get(block, 1) > 1:
                    parts.append(f"reuse every {stage.reuse[block]} steps ({'its own block' if block == unit_id else 'block ' + block})")
                action = "; ".join(parts) or "kept"
            lines.append(
                f"  {unit_id:<{width}}  {entry['score']:>7.4f}  {kept_heads:>3}/{heads:<3}  {kept_frames:>3}/{frames:<3}  {action}"
            )
        if "flops_removed" in info:
            lines.append(
                f"  removed per denoiser call{' (averaged over the stage: reuse)' if stage.reused_blocks else ''}: "
                f"{_human(info['flops_removed'])}FLOPs "
                f"({100 * info['flops_removed'] / summary['total_flops']:.2f}% of {_human(summary['total_flops'])}), "
                f"{_human(info['params_removed'])} params ({100 * info['params_removed'] / summary['total_params']:.2f}% of {_human(summary['total_params'])})"
            )
    lines.append("")
    if "trajectory_flops_removed" in summary:
        share = summary["trajectory_flops_removed"] / summary["total_flops"]
        lines.append(
            f"total: {_human(summary['trajectory_flops_removed'])}FLOPs removed per call averaged over the trajectory "
            f"({100 * share:.2f}%, FLOP-predicted speedup {summary['predicted_speedup']:.3f}x)"
        )
        if summary["core_flops"]:
            lines.append(f"attention core of the units (softmax(QK^T)V, {_human(summary['core_flops'])}FLOPs per call, "
                         f"{100 * summary['core_flops'] / summary['total_flops']:.1f}% of the total): "
                         f"{100 * summary['trajectory_core_removed'] / summary['core_flops']:.2f}% removed")
    else:
        lines.append("pass --model to count the parameters and FLOPs each stage removes")
    return "\n".join(lines)
