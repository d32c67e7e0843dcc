"""Run a plan's stage on the eager model, without compiling: what `plan --search` measures.

Forward hooks give the pruning semantics of docs/ARCHITECTURE.md on the loaded denoiser:
- dropped block: its output is its input (an attention that is its own block: its output is 0);
- dropped attention: its output is 0, so the residual add outside it leaves h unchanged;
- pruned heads: their slices of the output projection's input are 0 (= their q/k/v rows and
  out-projection columns deleted; the out bias stays);
- temporal reuse at step j of the stage: a block whose period k divides j stores its residual
  (output − input; for an attention that is its own block, its output); at the other steps its
  output is replaced by input + the stored residual (the block still runs: this measures, it does
  not save time).
- windows (full 3-D attention): while the unit runs, its attention kernel gets a block-banded mask
  per head (a video query of frame f sees the keys of frames within ±W and every text key; text
  queries and dense heads see all), an N×N boolean per head: for the shapes a search runs at.
Frame pruning is not applied here (the search does not propose it). The model is untouched once
the context exits. Tests hold this to the compiled programs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import F3Error
from ..models.base import TemporalUnit
from ..models.kernels import KernelCalls
from ..reuse import StageClock, pattern_at
from .plan import Stage


def _zero_output(module, args, kwargs, output):
    if getattr(module, "residual_connection", False):
        raise F3Error("an attention with an internal residual cannot be dropped by zeroing its output")
    return torch.zeros_like(output)


def _input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _tensor(output) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    return output.sample if hasattr(output, "sample") else output


def _replaced(output, tensor: torch.Tensor):
    """`output` (a tensor, a tuple or a diffusers output dataclass) with its tensor replaced."""
    if isinstance(output, tuple):
        return (tensor,) + tuple(output[1:])
    if hasattr(output, "sample"):  # a diffusers output dataclass
        output.sample = tensor
        return output
    return tensor


def _identity(module, args, kwargs, output):
    return _replaced(output, _input(args, kwargs))


def _reuse_hook(block: str, own: bool, reused: bool, cache: dict[str, torch.Tensor]):
    def hook(module, args, kwargs, output):
        base = 0 if own else _input(args, kwargs)
        if reused:
            return _replaced(output, base + cache[block])
        cache[block] = _tensor(output) - base
        return output
    return hook


def _head_mask(unit: TemporalUnit, heads: list[int]):
    keep = torch.ones(unit.heads * unit.head_dim)
    for head in heads:
        keep[head * unit.head_dim:(head + 1) * unit.head_dim] = 0.0

    def hook(module, args):
        hidden = args[0]
        return (hidden * keep.to(hidden.device, hidden.dtype),) + tuple(args[1:])
    return hook


def banded_mask(unit: TemporalUnit, windows: list) -> torch.Tensor:
    """(1, H, N, N) boolean: which keys each query of each head of `unit` may see under `windows`."""
    length = unit.sequence
    frame = torch.full((length,), -1)
    frame[unit.text_tokens:] = torch.arange(unit.frames).repeat_interleave(unit.tokens)
    near = (frame[:, None] - frame[None, :]).abs()
    text = (frame[:, None] < 0) | (frame[None, :] < 0)
    every = torch.ones(length, length, dtype=torch.bool)
    return torch.stack([every if w is None else (near <= w) | text for w in windows])[None]


def _masked(mask: torch.Tensor) -> KernelCalls:
    """Gives the one attention kernel of a unit its banded mask (the processor passes none)."""
    def before(arguments: dict) -> dict:
        if arguments.get("attn_mask") is not None:
            raise F3Error("this attention already has a mask; eager windows need a plain kernel")
        return arguments | {"attn_mask": mask.to(arguments["query"].device)}
    return KernelCalls(before=before)


def _window_hooks(module: nn.Module, unit: TemporalUnit, windows: list) -> list:
    mask, active = banded_mask(unit, windows), []

    def enter(module, args):
        mode = _masked(mask)
        mode.__enter__()
        active.append(mode)

    def leave(module, args, output):
        active.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


@contextlib.contextmanager
def stage_applied(denoiser: nn.Module, stage: Stage, units: list[TemporalUnit], step: int = 0,
                  cache: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, `denoiser` computes the model pruned by `stage` (frames excepted) at
    `step` of the stage; `cache` carries the residuals of temporal reuse between steps."""
    if stage.keep_frames:
        raise F3Error("eager application does not cover keep_frames; compile the plan to run frame pruning")
    modules = dict(denoiser.named_modules())
    by_id = {unit.id: unit for unit in units}
    handles = []
    try:
        for block in stage.drop_blocks:
            hook = _zero_output if block in by_id else _identity
            handles.append(modules[block].register_forward_hook(hook, with_kwargs=True))
        for unit_id in stage.drop_attention:
            handles.append(modules[unit_id].register_forward_hook(_zero_output, with_kwargs=True))
        for unit_id, heads in stage.prune_heads.items():
            out_projection = modules[unit_id].to_out[0]
            handles.append(out_projection.register_forward_pre_hook(_head_mask(by_id[unit_id], heads)))
        for unit_id, windows in stage.windows.items():
            if any(w is not None for w in windows):
                handles += _window_hooks(modules[unit_id], by_id[unit_id], windows)
        reused = pattern_at(stage.reuse, step)
        if reused and cache is None:
            raise F3Error(f"step {step} of the stage reuses {', '.join(reused)} but no residuals are carried")
        for block in stage.reused_blocks:
            hook = _reuse_hook(block, block in by_id, block in reused, cache)
            handles.append(modules[block].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def plan_denoise_for(model, plan, units):
    """A fresh `denoise_for(t)` for one `denoise_loop`: the model's denoise under the stage holding
    t, at that step of the stage (temporal reuse carries residuals from step to step)."""
    clock = StageClock()
    cache: dict[str, torch.Tensor] = {}

    def denoise_for(timestep: int):
        index = plan.stage_for(timestep)
        step = clock.tick(index)
        if step == 0:
            cache.clear()
        stage = plan.stages[index]
        if stage.is_empty:
            return model.denoise

        def denoise(sample, t, context):
            with stage_applied(model.denoiser, stage, units, step, cache):
                return model.denoise(sample, t, context)
        return denoise
    return denoise_for
