"""Counted cost of a denoiser call and of what a plan stage removes from it.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on a real forward pass of the
normalized denoise function at the export shapes (CFG-doubled batch), per module. What a stage
removes is then derived from those per-module counts with the exact semantics of each unit:

  drop block      all FLOPs and parameters inside the block
  drop attention  the attention's FLOPs; its parameters and those of the norm feeding it
  prune heads     q/k/v/out projections and the attention core scale with kept heads / heads
                  (all heads pruned: the output is the bias, written 0 × norm(h) + b so that
                  exporters do not fold it into a full-size constant; the norm stays)
  keep frames     k/v projections and the attention core scale with kept frames / frames
  windows         full 3-D attention: the core of a head at window W keeps
                  [T·(T + F·S) + F·S·(T + K·S)] / (T + F·S)² of its share, K = min(2W + 1, F)
                  (T text tokens, F frames of S tokens; what `window_attention` computes)
  reuse k         the block's FLOPs (after the pruning above inside it) at the steps that reuse:
                  of a stage's n steps, ceil(n / k) compute (n → ∞: a share 1 − 1/k is saved);
                  no parameters (the computing program keeps them all)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import torch
from torch import nn

from ..models.base import TemporalUnit, VideoModel, VideoShapes
from ..models.flops import call_flops, count_flops, flop_counter

__all__ = ["ModelCost", "call_flops", "count_flops", "flop_counter", "window_core_share"]
from ..windows import core_share

aten = torch.ops.aten


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def window_core_share(unit: TemporalUnit, window: int) -> float:
    """Share of a head's attention-core FLOPs left when it attends within ±`window` frames."""
    return core_share(unit.text_tokens, unit.frames, unit.tokens, window)


def _skipped_share(period: int, steps: int | None) -> float:
    """Share of a stage's `steps` calls that a block reused every `period` steps skips (None: a long stage)."""
    return 1 - 1 / period if steps is None else (steps - math.ceil(steps / period)) / max(steps, 1)


def _core_kept(stage, unit: TemporalUnit) -> float:
    """Share of `unit`'s attention core a computed call of `stage` still runs: per-head windows and
    pruned heads on full 3-D attention; kept heads times kept frames on temporal attention."""
    pruned = set(stage.prune_heads.get(unit.id, []))
    if unit.spatiotemporal:
        windows = stage.windows.get(unit.id) or [None] * unit.heads
        return sum(1.0 if w is None else window_core_share(unit, w)
                   for h, w in enumerate(windows) if h not in pruned) / unit.heads
    return (unit.heads - len(pruned)) / unit.heads * len(stage.keep_frames.get(unit.id, range(unit.frames))) / unit.frames


@dataclass
class ModelCost:
    """Counted FLOPs and parameters of one denoiser call, per temporal unit and block."""

    total_flops: int
    total_params: int
    flops: dict[str, int]  # module path -> FLOPs (all modules)
    units: dict[str, TemporalUnit]
    unit_params: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> q/k/v/out/norm/bias params
    block_params: dict[str, int] = field(default_factory=dict)

    @classmethod
    def measure(cls, model: VideoModel, units: list[TemporalUnit], shapes: VideoShapes | None = None,
                shape_only: bool | None = None) -> "ModelCost":
        """Counted on a forward pass: on shapes alone (fake tensors over the real weights, or the
        meta device: seconds at any size, nothing computed) when the real one would be long
        (`shape_only` None: weights × latent elements above 1e11), else on real tensors, which is
        quicker for small models. The counts are the same either way."""
        total, per_module = call_flops(model, shapes, shape_only)
        modules = dict(model.denoiser.named_modules())
        unit_params = {}
        for unit in units:
            attention = modules[unit.id]
            parent, _, attr = unit.id.rpartition(".")
            norm = getattr(modules.get(parent), attr.replace("attn", "norm"), None) if attr.startswith("attn") else None
            unit_params[unit.id] = {
                "q": _params(attention.to_q), "k": _params(attention.to_k), "v": _params(attention.to_v),
                # joint attention (HunyuanVideo 1.5): the context's output projection loses pruned heads too
                "out_weight": attention.to_out[0].weight.numel() + (
                    attention.to_add_out.weight.numel() if getattr(attention, "to_add_out", None) is not None else 0),
                "out_bias": 0 if attention.to_out[0].bias is None else attention.to_out[0].bias.numel(),
                "attention": _params(attention),
                "norm": _params(norm) if isinstance(norm, nn.Module) else 0,
            }
        blocks = {unit.block for unit in units}
        return cls(
            total_flops=total, total_params=_params(model.denoiser), flops=per_module,
            units={unit.id: unit for unit in units}, unit_params=unit_params,
            block_params={block: _params(modules[block]) for block in blocks},
        )

    def _attention_split(self, unit_id: str) -> dict[str, int]:
        flops = self.flops
        # joint attention projects the context with its own add_q/k/v_proj and to_add_out
        q, k, v = (flops.get(f"{unit_id}.{name}", 0) + flops.get(f"{unit_id}.add_{name[-1]}_proj", 0)
                   for name in ("to_q", "to_k", "to_v"))
        out = flops.get(f"{unit_id}.to_out.0", 0) + flops.get(f"{unit_id}.to_add_out", 0)
        total = flops.get(unit_id, 0)
        return {"q": q, "k": k, "v": v, "out": out, "core": total - q - k - v - out, "total": total}

    def stage_removed(self, stage, steps: int | None = None) -> tuple[int, int]:
        """(FLOPs, parameters) that `stage` removes from one denoiser call, averaged over the
        stage's `steps` steps where it reuses blocks (None: a long stage)."""
        flops, params = self._pruned(stage)
        for block in stage.reused_blocks:
            saved = _skipped_share(stage.reuse[block], steps)
            inside = self.flops.get(block, 0) - self._pruned(stage, only=block)[0]
            flops += round(max(inside, 0) * saved)
        return int(flops), int(params)

    @property
    def core_flops(self) -> int:
        """Attention-core FLOPs (softmax(QK^T)V) of the units in one denoiser call."""
        return sum(self._attention_split(unit_id)["core"] for unit_id in self.units)

    def core_removed(self, stage, steps: int | None = None) -> int:
        """Attention-core FLOPs of the units that `stage` removes from one denoiser call: dropped
        units, narrowed windows, pruned heads and frames, and the calls a reused block skips
        (averaged over the stage's `steps` steps, as `stage_removed`)."""
        removed = 0.0
        for unit_id, unit in self.units.items():
            core = self._attention_split(unit_id)["core"]
            if unit_id in stage.drop_attention or unit_id in stage.drop_blocks or unit.block in stage.drop_blocks:
                removed += core
                continue
            kept = _core_kept(stage, unit)
            if stage.reuse.get(unit.block, 1) > 1:
                kept *= 1 - _skipped_share(stage.reuse[unit.block], steps)
            removed += core * (1 - kept)
        return round(removed)

    def _pruned(self, stage, only: str | None = None) -> tuple[int, int]:
        """(FLOPs, parameters) removed by dropping and head/frame pruning (within block `only`)."""
        flops = params = 0
        dropped_blocks = set(stage.drop_blocks) if only is None else set()
        for block in dropped_blocks - set(self.units):
            flops += self.flops.get(block, 0)
            params += self.block_params.get(block, 0)
        # an attention that is its own block is dropped as an attention (its norm goes too)
        dropped = set(stage.drop_attention) | (set(stage.drop_blocks) & set(self.units))
        for unit_id, unit in self.units.items():
            if (unit.block in dropped_blocks and unit.block != unit_id) or (only is not None and unit.block != only):
                continue
            split = self._attention_split(unit_id)
            counts = self.unit_params[unit_id]
            if unit_id in dropped:
                flops += split["total"]
                params += counts["attention"] + counts["norm"]
                continue
            windows = stage.windows.get(unit_id)
            if unit.spatiotemporal and (windows or unit_id in stage.prune_heads):
                # full 3-D attention: windows shrink each head's core; pruned heads lose their core and
                # their output-projection columns (q/k/v projections stay whole; see window_attention)
                pruned = set(stage.prune_heads.get(unit_id, []))
                kept = _core_kept(stage, unit)
                flops += round(split["core"] * (1.0 - kept) + split["out"] * len(pruned) / unit.heads)
                params += round(counts["out_weight"] * len(pruned) / unit.heads)
                continue
            pruned_heads = len(stage.prune_heads.get(unit_id, []))
            kept_heads = (unit.heads - pruned_heads) / unit.heads
            kept_frames = len(stage.keep_frames.get(unit_id, range(unit.frames))) / unit.frames
            remaining = (
                split["q"] * kept_heads + split["out"] * kept_heads
                + (split["k"] + split["v"] + split["core"]) * kept_heads * kept_frames
            )
            flops += round(split["total"] - remaining)
            if pruned_heads:
                fraction = pruned_heads / unit.heads
                params += round((counts["q"] + counts["k"] + counts["v"] + counts["out_weight"]) * fraction)
        return int(flops), int(params)
