"""Scores ("aggregate temporal attention value") derived from calibration statistics.

All scores are computed over a set of denoising steps (a stage) from sums, so a stage's score is
the aggregate over exactly its own steps. Higher score = more temporal work = kept longer.

cross_frame_mass (default)
    A = attention probabilities averaged over rows (prompts, CFG halves, spatial positions):
    head score = mean over query frames i of (1 − A[h, i, i]), the probability mass a frame
    pays to *other* frames. Unit score = mean over heads.
output_norm
    unit score = mean ‖attention output‖ / ‖residual input‖; head score = the same for each
    head's contribution through the output projection.
Frames (both criteria): key frame k's score = mean over heads and query frames of A[h, q, k],
the attention mass it receives. Blocks: the mean of their attentions' scores
(cross_frame_mass) or the measured ‖block output − input‖ / ‖input‖ (output_norm).
residual_change (blocks only; the default of reuse plans)
    the mean relative change of a block's residual between consecutive denoising steps over a
    stage, ‖r_s − r_{s−1}‖ / ‖r_{s−1}‖ (`reuse_score`). Low = reusing the residual of an earlier
    step there changes little. An attention's score is its block's.
random:SEED
    a control, not a criterion: uniform random scores, reproducible from SEED, the unit id and
    the stage's steps. Plans made from it show what the calibration statistics are worth.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .stats import CalibrationStats
from ..errors import F3Error

CRITERIA = ("cross_frame_mass", "output_norm", "residual_change", "random")
BLOCK_ONLY = ("residual_change",)  # criteria that rank temporal blocks, not attentions or heads
DEFAULT_CRITERION = "cross_frame_mass"


def is_criterion(name: object) -> bool:
    """A known criterion name, or ``random:SEED`` (the random-plan control)."""
    if not isinstance(name, str):
        return False
    if name.startswith("random:"):
        return name[7:].isdigit()
    return name in CRITERIA and name != "random"


def _random(criterion: str, key: str, steps: Sequence[int], count: int) -> torch.Tensor:
    import hashlib

    text = f"{criterion}|{key}|{','.join(map(str, steps))}".encode()
    seed = int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
    return torch.rand(count, generator=torch.Generator().manual_seed(seed))


def _steps(stats: CalibrationStats, steps: Sequence[int] | None) -> list[int]:
    return list(range(len(stats.timesteps))) if steps is None else list(steps)


def mean_attention(stats: CalibrationStats, unit_id: str, steps: Sequence[int] | None = None) -> torch.Tensor:
    """(H, F, F) attention probabilities averaged over every recorded row of `steps`."""
    steps = _steps(stats, steps)
    attn = stats.unit(unit_id, "attn")[steps].double().sum(0)
    rows = stats.unit(unit_id, "rows")[steps].double().sum()
    return (attn / rows.clamp_min(1)).float()


def first_frame_mass(stats: CalibrationStats, unit_id: str, steps: Sequence[int] | None = None) -> torch.Tensor:
    """(H, F) share of the attention of each query frame's queries that goes to the first latent frame
    (an image-to-video model's conditioning image), per head."""
    return mean_attention(stats, unit_id, steps)[..., 0]


def hidden_first_frame(first_frame: Sequence[float], window: int) -> float:
    """The share of a head's attention from later frames (1..F-1) to the first frame that a ±`window`
    window hides (queries of frames beyond `window` no longer see it), from `first_frame_mass`'s row."""
    later = list(first_frame[1:])
    return sum(mass for frame, mass in enumerate(later, 1) if frame > window) / max(1, len(later))


def window_mass(stats: CalibrationStats, unit_id: str, window: int, steps: Sequence[int] | None = None) -> torch.Tensor:
    """(H,) share of each head's attention that a ±`window`-frame window keeps, averaged over query
    frames: the mass on key frames within `window` of the query's frame plus the mass on text keys
    (which stay visible). Full 3-D attention units only."""
    steps = _steps(stats, steps)
    rows = stats.unit(unit_id, "rows")[steps].double().sum().clamp_min(1)
    attn = stats.unit(unit_id, "attn")[steps].double().sum(0) / rows  # (H, F, F)
    frames = attn.shape[-1]
    distance = (torch.arange(frames)[:, None] - torch.arange(frames)[None, :]).abs()
    inside = (attn * (distance <= window)).sum(-1)  # (H, F)
    text = f"unit/{unit_id}/text"
    if text in stats.tensors:
        inside = inside + stats.tensors[text][steps].double().sum(0) / rows
    return inside.mean(-1).clamp(0, 1).float()


def window_scores(stats: CalibrationStats, unit_id: str, window: int, criterion: str,
                  steps: Sequence[int] | None = None) -> torch.Tensor:
    """(H,) score of windowing each head at `window`: F3's rule per head, the attention mass outside
    the window (cross_frame_mass); output_norm and random:SEED as for heads."""
    if criterion == "cross_frame_mass":
        return 1.0 - window_mass(stats, unit_id, window, steps)
    return head_scores(stats, unit_id, criterion, steps)


def _block_of(stats: CalibrationStats, unit_id: str) -> str:
    return next(unit.block for unit in stats.units if unit.id == unit_id)


def head_scores(stats: CalibrationStats, unit_id: str, criterion: str, steps: Sequence[int] | None = None) -> torch.Tensor:
    """(H,) score per head of `unit_id`."""
    steps = _steps(stats, steps)
    if criterion == "residual_change":  # a block's measure: every head gets it
        heads = stats.unit(unit_id, "attn").shape[1]
        return torch.full((heads,), reuse_score(stats, _block_of(stats, unit_id), steps))
    if criterion.startswith("random:"):
        return _random(criterion, unit_id, steps, stats.unit(unit_id, "attn").shape[1])
    if criterion == "cross_frame_mass":
        attn = mean_attention(stats, unit_id, steps)
        return 1.0 - torch.diagonal(attn, dim1=-2, dim2=-1).mean(-1)
    if criterion == "output_norm":
        calls = stats.unit(unit_id, "calls")[steps].sum().clamp_min(1)
        return stats.unit(unit_id, "head_branch")[steps].sum(0) / calls
    raise ValueError(criterion)


def unit_score(stats: CalibrationStats, unit_id: str, criterion: str, steps: Sequence[int] | None = None) -> float:
    """Score of one attention unit."""
    steps = _steps(stats, steps)
    if criterion.startswith("random:"):
        return float(_random(criterion, unit_id, steps, 1))
    if criterion == "output_norm":
        calls = stats.unit(unit_id, "calls")[steps].sum().clamp_min(1)
        return float(stats.unit(unit_id, "branch")[steps].sum() / calls)
    if criterion == "residual_change":
        return reuse_score(stats, _block_of(stats, unit_id), steps)
    return float(head_scores(stats, unit_id, criterion, steps).mean())


def frame_scores(stats: CalibrationStats, unit_id: str, steps: Sequence[int] | None = None) -> torch.Tensor:
    """(F,) attention mass each key frame receives (mean over heads and query frames)."""
    return mean_attention(stats, unit_id, steps).mean(dim=(0, 1))


def block_score(stats: CalibrationStats, block_id: str, criterion: str, steps: Sequence[int] | None = None) -> float:
    steps = _steps(stats, steps)
    if criterion.startswith("random:"):
        return float(_random(criterion, block_id, steps, 1))
    if criterion == "output_norm":
        calls = stats.block(block_id, "calls")[steps].sum().clamp_min(1)
        return float(stats.block(block_id, "ratio")[steps].sum() / calls)
    if criterion == "residual_change":
        return reuse_score(stats, block_id, steps)
    unit_ids = next(block.units for block in stats.blocks if block.id == block_id)
    return float(sum(unit_score(stats, u, criterion, steps) for u in unit_ids) / len(unit_ids))


def reuse_score(stats: CalibrationStats, block_id: str, steps: Sequence[int] | None = None) -> float:
    """Mean relative change of `block_id`'s residual from the previous step over `steps` (step 0,
    which has no previous step, adds nothing)."""
    steps = _steps(stats, steps)
    change = stats.residual_change(block_id, steps)
    if change is None and f"block/{block_id}/change" not in stats.tensors:
        raise F3Error("the calibration in use has no residual-change statistics (it predates them or ran with "
                      "--residual-change off); "
                      "re-run `f3compile calibrate`")
    if change is None:
        raise F3Error(f"the calibration in use compared no residuals of {block_id} at steps {steps} "
                      "(step 0 has no previous step); re-run `f3compile calibrate` with at least 2 steps")
    return change


def score_by_step(stats: CalibrationStats, criterion: str) -> torch.Tensor:
    """(units, steps) unit scores computed on each step alone (for the per-model heatmap)."""
    units = stats.units
    table = torch.zeros(len(units), len(stats.timesteps))
    for row, unit in enumerate(units):
        for step in range(len(stats.timesteps)):
            table[row, step] = unit_score(stats, unit.id, criterion, [step])
    return table
