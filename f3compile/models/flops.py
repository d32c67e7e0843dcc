"""FLOPs of one denoiser call, counted by `torch.utils.flop_counter` (the CPU attention kernel
included), per module path: what `planning.cost` derives a plan's savings from and what
`calibration` sizes its default query fraction against."""

from __future__ import annotations

from typing import Callable

import torch

from .base import DenoiseModule, VideoModel, VideoShapes

aten = torch.ops.aten


def _sdpa_formula():
    from torch.utils.flop_counter import sdpa_flop_count

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return formula


def flop_counter() -> "torch.utils.flop_counter.FlopCounterMode":
    """A FlopCounterMode that also counts the CPU attention kernel (QKᵀ and PV)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_formula()}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable, inputs: tuple) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path) of one call `fn(*inputs)`."""
    with flop_counter() as counter, torch.no_grad():
        fn(*inputs)
    per_module: dict[str, int] = {}
    prefix = "DenoiseModule." + DenoiseModule.PREFIX
    for name, ops in counter.get_flop_counts().items():
        if name.startswith(prefix):
            per_module[name[len(prefix):]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def call_flops(model: VideoModel, shapes: VideoShapes | None = None, shape_only: bool | None = None,
               ) -> tuple[int, dict[str, int]]:
    """(total, per module path) FLOPs of one CFG-batch denoiser call at `shapes`: on shapes alone
    (fake tensors over the real weights, or the meta device: seconds at any size, nothing computed)
    when the real one would be long (`shape_only` None: weights × latent elements above 1e11), else
    on real tensors, which is quicker for small models. The counts are the same either way. With
    experts, one call runs one of them: the per-module counts of each, the larger total."""
    from contextlib import nullcontext

    from .discovery import _shape_only

    inputs = model.example_inputs(shapes or model.shapes, cfg=True)
    if shape_only is None:
        shape_only = sum(p.numel() for p in model.denoiser.parameters()) * inputs[0].numel() > 1e11
    with nullcontext() if model.on_meta or not shape_only else _shape_only(model.denoiser) as mode:
        if mode is not None:
            inputs = tuple(mode.from_tensor(x) for x in inputs)
        if model.experts:
            per_module, totals = {}, []
            for name in model.experts:
                total, counts = count_flops(model.denoise_module(name), inputs)
                per_module |= counts
                totals.append(total)
            return max(totals), per_module
        return count_flops(model.denoise_module(), inputs)
