"""Find temporal attention by what it does, not by what it is called.

A module is a temporal attention unit when, traced on real inputs, it is *self*-attention whose
sequence length equals the number of frames at two different spatial sizes (spatial attention's
sequence follows the spatial size; cross-attention has a separate key/value input). Names are
only used afterwards, to report ids (= module paths) and to find each unit's enclosing block:
the outermost ancestor that holds temporal attention only, no convolution (those belong to the
spatial path: resnets, temporal convs, samplers), and maps its input to an output of the same
shape (so "output = input" is a well-defined pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import F3Error
from .base import TemporalBlock, TemporalUnit, VideoModel, VideoShapes

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_attention(module: nn.Module) -> bool:
    """Attention modules in the diffusers sense: separate q/k/v projections and a head count."""
    return all(hasattr(module, name) for name in ("to_q", "to_k", "to_v", "to_out", "heads"))


@dataclass
class _Seen:
    seq: int = -1
    rows: int = -1
    self_attention: bool = True
    calls: int = 0


def _probe(model: VideoModel, shapes: VideoShapes, names: dict[nn.Module, str]) -> tuple[dict[str, _Seen], dict[str, tuple]]:
    seen: dict[str, _Seen] = {}
    io_shapes: dict[str, tuple] = {}
    handles = []

    def attention_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        record = seen.setdefault(names[module], _Seen())
        if hidden.ndim == 4:  # (N, C, H, W) inputs are flattened over H*W inside the processor
            rows, seq = hidden.shape[0], hidden.shape[2] * hidden.shape[3]
        else:
            rows, seq = hidden.shape[0], hidden.shape[1]
        record.seq, record.rows, record.calls = seq, rows, record.calls + 1
        record.self_attention = record.self_attention and context is None

    def block_hook(module, args, kwargs, output):
        hidden = args[0] if args else next(iter(kwargs.values()))
        out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        if isinstance(hidden, torch.Tensor) and isinstance(out, torch.Tensor):
            io_shapes[names[module]] = (tuple(hidden.shape), tuple(out.shape))

    for module, name in names.items():
        if is_attention(module):
            handles.append(module.register_forward_pre_hook(attention_hook, with_kwargs=True))
        elif name and not isinstance(module, _CONTAINERS):
            handles.append(module.register_forward_hook(block_hook, with_kwargs=True))
    try:
        sample, timestep, ehs = model.example_inputs(shapes, cfg=False)
        with torch.no_grad():
            model.denoise(sample, timestep, ehs)
    finally:
        for handle in handles:
            handle.remove()
    return seen, io_shapes


def _second_size(model: VideoModel) -> list[VideoShapes]:
    base = model.shapes
    options = []
    for factor in (2.0, 0.5):  # doubling first: halving can collapse the deepest level to 1x1 in both probes
        height, width = int(base.height * factor), int(base.width * factor)
        options.append(VideoShapes(1, base.frames, height, width))
    return options


def find_temporal_units(model: VideoModel) -> list[TemporalUnit]:
    """Every temporal attention unit of `model`'s denoiser, in module order.

    Raises `F3Error` when the model has no temporal attention.
    """
    cached = model.info.get("_temporal_units")
    if cached is not None:
        return list(cached)
    root = model.denoiser
    names = {module: name for name, module in root.named_modules()}
    frames = model.shapes.frames
    base_shapes = VideoShapes(1, frames, model.shapes.height, model.shapes.width)
    first, io_shapes = _probe(model, base_shapes, names)
    second = None
    for shapes in _second_size(model):
        try:
            second, _ = _probe(model, shapes, names)
            break
        except Exception:  # this spatial size does not fit the architecture; try the next
            continue
    if second is None:
        raise F3Error(f"could not trace {model.spec} at a second spatial size to confirm the frame axis")

    temporal_names = []
    for name, record in first.items():
        other = second.get(name)
        if (
            record.self_attention and other is not None and other.self_attention
            and record.seq == frames and other.seq == frames and record.rows != other.rows
        ):
            temporal_names.append(name)
    attention_names = set(first)
    if not temporal_names:
        raise F3Error(
            f"{model.spec} has no temporal attention (no self-attention over the {frames}-frame axis); "
            "f3compile prunes temporal attention only"
        )
    temporal_set = set(temporal_names)
    modules = dict(root.named_modules())

    def only_temporal(prefix: str) -> bool:
        inside = [n for n in attention_names if n.startswith(prefix + ".")]
        if not inside or not any(n in temporal_set for n in inside) or not all(n in temporal_set for n in inside):
            return False
        # a temporal block mixes tokens across frames; convolutions (resnets, temporal convs,
        # up/down samplers) belong to the surrounding path, so a module holding one is not a block
        return not any(isinstance(m, _CONVS) for m in modules[prefix].modules())

    units = []
    for name in sorted(temporal_names, key=list(modules).index):
        block = None
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth])
            if isinstance(modules[prefix], _CONTAINERS):
                continue
            if not only_temporal(prefix):
                break
            shapes = io_shapes.get(prefix)
            if shapes is not None and shapes[0] == shapes[1]:
                block = prefix
        if block is None:
            block = name  # the attention itself is the smallest residual-free unit
        attention = modules[name]
        inner = attention.to_q.out_features
        units.append(TemporalUnit(
            id=name, block=block, heads=int(attention.heads), head_dim=int(inner // attention.heads),
            frames=frames, channels=int(attention.to_q.in_features),
        ))
    model.info["_temporal_units"] = tuple(units)
    return units


def temporal_blocks(units: list[TemporalUnit]) -> list[TemporalBlock]:
    """The temporal blocks of `units`, in order of first appearance."""
    order: dict[str, list[str]] = {}
    for unit in units:
        order.setdefault(unit.block, []).append(unit.id)
    return [TemporalBlock(id=block, units=tuple(ids)) for block, ids in order.items()]
