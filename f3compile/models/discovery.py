"""Find temporal attention by what it does, not by what it is called.

A module is a temporal attention unit when, traced on example inputs, it is *self*-attention whose
sequence length equals the number of frames at two different spatial sizes (spatial attention's
sequence follows the spatial size; cross-attention has a separate key/value input). Names are
only used afterwards, to report ids (= module paths) and to find each unit's enclosing block:
the outermost ancestor that holds temporal attention only, no convolution (those belong to the
spatial path: resnets, temporal convs, samplers), and maps its input to an output of the same
shape (so "output = input" is a well-defined pruning).

The traces are shape-only: the denoiser runs under fake tensors (`FakeTensorMode`), so the hooks
see every shape while no convolution, matmul or attention is computed (traced for real, a
full-width preset at twice its size took minutes on a CPU), and the model is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import F3Error
from .base import TemporalBlock, TemporalUnit, VideoModel, VideoShapes
from .kernels import KernelCalls

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
    queries: int = -1  # sequence lengths at the attention kernel itself (after any text is joined in)
    keys: int = -1


class _KernelShapes(KernelCalls):
    """Records the query and key lengths of the attention kernel calls, by the attention module
    running them (a processor may join text and video into one sequence before the kernel)."""

    def __init__(self, seen: dict[str, "_Seen"]):
        super().__init__(after=self._record)
        self.seen, self.stack = seen, []

    def _record(self, arguments: dict, out) -> None:
        if self.stack:
            record = self.seen.setdefault(self.stack[-1], _Seen())
            record.queries, record.keys = int(arguments["query"].shape[-2]), int(arguments["key"].shape[-2])


def _probe(
    model: VideoModel, shapes: VideoShapes, names: dict[nn.Module, str], fake: bool = True,
) -> tuple[dict[str, _Seen], dict[str, tuple]]:
    """Run the denoiser once at `shapes` and record what the hooks see (shapes only).

    `fake`: trace under fake tensors (no real compute); else run the real forward.
    """
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
        record.seq, record.rows, record.calls = int(seq), int(rows), record.calls + 1
        record.self_attention = record.self_attention and context is None

    def block_hook(module, args, kwargs, output):
        hidden = args[0] if args else next(iter(kwargs.values()))
        out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        if isinstance(hidden, torch.Tensor) and isinstance(out, torch.Tensor):
            io_shapes[names[module]] = (tuple(int(d) for d in hidden.shape), tuple(int(d) for d in out.shape))

    kernels = _KernelShapes(seen)
    for module, name in names.items():
        if is_attention(module):
            handles.append(module.register_forward_pre_hook(attention_hook, with_kwargs=True))
            handles.append(module.register_forward_pre_hook(lambda m, a, k, n=name: kernels.stack.append(n),
                                                            with_kwargs=True))
            handles.append(module.register_forward_hook(lambda m, a, o: None if kernels.stack.pop() else None))
        elif name and not isinstance(module, _CONTAINERS):
            handles.append(module.register_forward_hook(block_hook, with_kwargs=True))
    try:
        sample, timestep, ehs = model.example_inputs(shapes, cfg=False)  # small real tensors
        if fake:
            with _shape_only(model.denoiser) as mode, torch.no_grad(), kernels:
                model.denoise(mode.from_tensor(sample), mode.from_tensor(timestep), mode.from_tensor(ehs))
        else:
            with torch.no_grad(), kernels:
                model.denoise(sample, timestep, ehs)
    finally:
        for handle in handles:
            handle.remove()
    return seen, io_shapes


def _has_fake(value: Any, depth: int = 0) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(value, FakeTensor):
        return True
    if depth >= 3:
        return False
    if isinstance(value, dict):
        return any(_has_fake(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_has_fake(v, depth + 1) for v in value)
    return False


def _snapshot(holder: Any) -> dict[str, dict]:
    state = {"__dict__": dict(vars(holder))}
    if isinstance(holder, nn.Module):
        state["_parameters"] = dict(holder._parameters)
        state["_buffers"] = dict(holder._buffers)
    for key, value in vars(holder).items():  # caches kept in a dict attribute (filled in place)
        if type(value) is dict:
            state[key] = dict(value)
    return state


def _restore(holder: Any, before: dict[str, dict]) -> None:
    """Undo writes of fake tensors into `holder` since `before` (lazily built caches, buffers...)."""
    targets = {"__dict__": vars(holder)}
    if isinstance(holder, nn.Module):
        targets["_parameters"], targets["_buffers"] = holder._parameters, holder._buffers
    for key, old in before.items():
        if key not in targets and isinstance(vars(holder).get(key), dict):
            targets[key] = vars(holder)[key]
    for key, current in targets.items():
        old = before.get(key, {})
        for name in list(current):
            value = current[name]
            if (name not in old or old[name] is not value) and _has_fake(value):
                if name in old:
                    current[name] = old[name]
                else:
                    del current[name]


class _FakeLeak(RuntimeError):
    """Fake tensors stayed in the model after a shape-only probe (a bug to fix, not to fall back on)."""


@contextmanager
def _shape_only(root: nn.Module) -> Iterator[Any]:
    """A `FakeTensorMode` in which `root` runs on shapes alone and that leaves `root` as it was.

    Real parameters and buffers are converted to fake tensors on use (metadata only: no copy of
    the weights, the real tensors are never written); anything the forward stores on a module
    or attention processor that holds a fake tensor is put back afterwards, so a later real
    forward runs exactly as if discovery had not.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    holders = [holder for _, holder in _named_holders(root)]
    before = [_snapshot(holder) for holder in holders]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            yield mode
    finally:
        for holder, state in zip(holders, before):
            _restore(holder, state)
        leaked = [name for name, holder in _named_holders(root) if _has_fake(vars(holder))]
        if leaked:  # a write this guard does not know how to undo: not silently kept
            raise _FakeLeak(f"fake tensors left in {', '.join(leaked[:3])} after shape-only discovery")


def _named_holders(root: nn.Module) -> Iterator[tuple[str, Any]]:
    """Objects whose attributes a forward may write: every module and its attention processor."""
    for name, module in root.named_modules():
        yield name or "<root>", module
        processor = getattr(module, "processor", None)
        if processor is not None and not isinstance(processor, nn.Module) and hasattr(processor, "__dict__"):
            yield f"{name}.processor", processor


def _second_size(base: VideoShapes) -> list[VideoShapes]:
    options = []
    for factor in (2.0, 0.5):  # doubling first: halving can collapse the deepest level to 1x1 in both probes
        height, width = int(base.height * factor), int(base.width * factor)
        options.append(VideoShapes(1, base.frames, height, width))
    return options


def _trace(model: VideoModel, shapes: VideoShapes, names: dict[nn.Module, str], probe_mode: str):
    """(first, io_shapes, second, probe): the probes at `shapes` and at a second spatial size, and
    which trace answered ("fake" or "real").

    Shape-only (fake tensors) first. A model whose forward cannot run on fake tensors (say, one
    that branches on tensor *values*) is traced for real instead, as is one whose fake trace fits
    no second size, so the fallback only costs time, never a different answer.
    """
    if probe_mode not in ("fake", "real"):
        raise ValueError(f"_probe_mode must be 'fake' or 'real', got {probe_mode!r}")
    base_shapes = VideoShapes(1, shapes.frames, shapes.height, shapes.width)
    modes = (True, False) if probe_mode == "fake" else (False,)
    for fake in modes:
        last = fake is modes[-1]
        try:
            first, io_shapes = _probe(model, base_shapes, names, fake=fake)
        except _FakeLeak:
            raise
        except Exception:
            if last:
                raise
            continue  # not traceable on fake tensors: trace it for real
        for other in _second_size(base_shapes):
            try:
                second, _ = _probe(model, other, names, fake=fake)
                return first, io_shapes, second, "fake" if fake else "real"
            except _FakeLeak:
                raise
            except Exception:  # this spatial size does not fit the architecture; try the next
                continue
    raise F3Error(f"could not trace {model.spec} at a second spatial size to confirm the frame axis")


# (model fingerprint, frames, height, width) -> (units, which probe answered); a model's units
# depend on its architecture and the shapes it runs at, both of which the key holds
_CACHE: dict[tuple[str, int, int, int], tuple[tuple[TemporalUnit, ...], str]] = {}
_CACHE_SIZE = 64


def _key(model: VideoModel, shapes: VideoShapes) -> tuple[str, int, int, int]:
    return (model.fingerprint, shapes.frames, shapes.height, shapes.width)


def discovery_probe(model: VideoModel, shapes: VideoShapes | None = None) -> str | None:
    """Which trace answered the cached discovery of `model` at `shapes`: "fake" (shape-only) or
    "real" (the fallback); None when it has not run."""
    entry = _CACHE.get(_key(model, shapes or model.shapes))
    return entry[1] if entry else None


def forget(model: VideoModel) -> None:
    """Drop the cached discoveries of `model` (the next `find_temporal_units` traces again)."""
    for key in [key for key in _CACHE if key[0] == model.fingerprint]:
        del _CACHE[key]


def find_temporal_units(model: VideoModel, shapes: VideoShapes | None = None, *,
                        _probe_mode: str = "fake") -> list[TemporalUnit]:
    """Every temporal attention unit of `model`'s denoiser at `shapes` (default: the model's own), in
    module order; cached by (model fingerprint, shapes).

    Raises `F3Error` when the model has no temporal attention. `_probe_mode="real"` traces
    with real compute (the former behaviour; tests compare both) and bypasses the cache.
    """
    shapes = shapes or model.shapes
    key = _key(model, shapes)
    if _probe_mode == "fake" and key in _CACHE:
        return list(_CACHE[key][0])
    if model.experts:  # each expert on its own; ids keep the expert's name (`transformer_2.blocks.0.attn1`)
        import dataclasses

        units = []
        for name in model.experts:
            alone = dataclasses.replace(model, denoiser=model.denoiser[name], denoise_call=model.info["_expert_call"],
                                        experts=None, fingerprint=f"{model.fingerprint}/{name}")
            units += [dataclasses.replace(unit, id=f"{name}.{unit.id}", block=f"{name}.{unit.block}")
                      for unit in find_temporal_units(alone, shapes, _probe_mode=_probe_mode)]
        if _probe_mode == "fake":
            _remember(key, units, discovery_probe(alone, shapes) or "fake")
        return units
    root = model.denoiser
    names = {module: name for name, module in root.named_modules()}
    frames = model.latent_frames(shapes.frames)
    first, io_shapes, second, probe = _trace(model, shapes, names, _probe_mode)

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
        units = _spatiotemporal_units(model, shapes, names, first, second, io_shapes, probe)
        if units:
            if _probe_mode == "fake":
                _remember(key, units, probe)
            return units
        raise F3Error(
            f"{model.spec} has no temporal attention (no self-attention over the {frames}-frame axis, and none "
            "over all frames' tokens); f3compile prunes attention across frames only"
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
    if _probe_mode == "fake":
        _remember(key, units, probe)
    return units


def _remember(key, units: list[TemporalUnit], probe: str) -> None:
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (tuple(units), probe)


def _spatiotemporal_units(model: VideoModel, shapes: VideoShapes, names: dict[nn.Module, str], first: dict,
                          second: dict, io_shapes: dict, probe: str) -> list[TemporalUnit]:
    """Full 3-D attention: self-attention whose kernel sequence is `text + frames x tokens`, the text
    block fixed, `tokens` growing with the spatial size and the whole growing by `tokens` per added
    frame (a third trace, one latent frame longer). Its token order (the text block first, then the
    frames one after another) is confirmed on real values (`_confirm_frame_major`)."""
    frames = model.latent_frames(shapes.frames)
    candidates = [name for name, record in first.items()
                  if name in second and record.queries > 0 and record.queries == record.keys
                  and second[name].queries == second[name].keys and second[name].queries != record.queries]
    if not candidates:
        return []
    longer = VideoShapes(1, shapes.frames + model.temporal_scale, shapes.height, shapes.width)
    third, _ = _probe(model, longer, names, fake=probe == "fake")
    found: dict[str, tuple[int, int]] = {}
    for name in candidates:
        one, two, three = first[name], second[name], third.get(name)
        if three is None or three.queries != three.keys:
            continue
        tokens = three.queries - one.queries  # one more frame adds one frame of tokens
        text = one.queries - frames * tokens
        if tokens <= 0 or text < 0 or (two.queries - text) % frames:
            continue
        found[name] = (tokens, text)
    if not found:
        return []
    modules = dict(model.denoiser.named_modules())
    ordered = sorted(found, key=list(modules).index)
    if not model.on_meta:  # a meta model has no values (a preset built to count FLOPs): its class was checked on real ones
        _confirm_frame_major(model, shapes, names, ordered[0], found[ordered[0]][1])
    units = []
    for name in ordered:
        block = name
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):  # the outermost module around this unit alone
            prefix = ".".join(parts[:depth])
            if isinstance(modules[prefix], _CONTAINERS):
                continue
            if any(other != name and other.startswith(prefix + ".") for other in found):
                break
            if any(isinstance(m, _CONVS) for m in modules[prefix].modules()):
                break
            io = io_shapes.get(prefix)
            if io is not None and io[0] == io[1]:
                block = prefix
        attention = modules[name]
        inner = attention.to_q.out_features
        tokens, text = found[name]
        units.append(TemporalUnit(
            id=name, block=block, heads=int(attention.heads), head_dim=int(inner // attention.heads), frames=frames,
            channels=int(attention.to_q.in_features), tokens=tokens, text_tokens=text,
        ))
    return units


class _Stop(Exception):
    """Ends a forward once the kernel it was run for has been seen."""


class _GrabQuery(KernelCalls):
    """Keeps the query of the first attention kernel run while `active`, then stops the forward."""

    def __init__(self):
        super().__init__(before=self._grab)
        self.active, self.query = False, None

    def _grab(self, arguments: dict) -> dict:
        if self.active:
            self.query = arguments["query"].detach().clone()
            raise _Stop
        return arguments


def _confirm_frame_major(model: VideoModel, shapes: VideoShapes, names: dict[nn.Module, str], unit: str,
                         text: int) -> None:
    """Change one latent frame of the input and see which query rows of the first spatiotemporal
    unit's attention kernel change: exactly that frame's tokens, after the text block, in a
    frame-major sequence. Real values at three latent frames; each forward stops at that kernel."""
    scale = model.temporal_scale
    small = VideoShapes(1, 1 + 2 * scale if scale > 1 else 3, shapes.height, shapes.width)
    frames = model.latent_frames(small.frames)
    module = next(m for m, n in names.items() if n == unit)
    sample, timestep, ehs = model.example_inputs(small, cfg=False)
    changed = sample.clone()
    changed[:, :, 1] += 1.0
    queries = []
    for x in (sample, changed):
        grab = _GrabQuery()
        handle = module.register_forward_pre_hook(lambda m, a: setattr(grab, "active", True))
        try:
            with torch.no_grad(), grab:
                model.denoise(x, timestep, ehs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if grab.query is None or grab.query.ndim != 4:
            raise F3Error(f"{unit} of {model.spec} ran no (B, heads, sequence, dim) attention kernel on a real "
                          "forward; cannot confirm its token order")
        queries.append(grab.query)
    changed_rows = (queries[0] - queries[1]).abs().amax(dim=(0, 1, 3)) > 0  # (sequence,)
    length = queries[0].shape[-2]
    tokens = (length - text) // frames
    expected = torch.zeros(length, dtype=torch.bool)
    expected[text + tokens: text + 2 * tokens] = True
    if tokens <= 0 or not torch.equal(changed_rows, expected):
        raise F3Error(f"{unit} of {model.spec} attends over {frames} frames of tokens, but not in frame-major order "
                      f"after a {text}-token text block; f3compile cannot window it")


def temporal_blocks(units: list[TemporalUnit]) -> list[TemporalBlock]:
    """The temporal blocks of `units`, in order of first appearance."""
    order: dict[str, list[str]] = {}
    for unit in units:
        order.setdefault(unit.block, []).append(unit.id)
    return [TemporalBlock(id=block, units=tuple(ids)) for block, ids in order.items()]
