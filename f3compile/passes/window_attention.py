"""window_attention: windowed heads of a spatiotemporal attention attend only to nearby frames.

A spatiotemporal unit's kernel runs on q, k, v (B, H, T + F·S, d): T text tokens first (CogVideoX;
T = 0 for Wan), then F frames of S tokens, frame-major. A head with window W lets a video query of
frame f see the keys of frames g with |f − g| ≤ W, plus every text key; text queries see all keys.

Before: one attention over the whole sequence for every head.
After:
  1. Heads are regrouped by window (dense heads, then W = 0, 1, …) by permuting the rows of the
     q/k/v projections (weights, biases, and any per-channel q/k norm across heads: an RMS over all
     heads is invariant to their order) and the columns of the output projection by the same
     permutation, so the groups are contiguous head ranges and nothing is reordered at run time.
  2. Each group runs its own dense attention, the outputs concatenated over heads:
     - dense: the original kernel on the group's heads;
     - W = 0: batched per-frame attention, (B, h, F·S, d) → (B·F, h, S, d), the T text keys
       appended to every frame's keys;
     - W > 0: each query frame gathers K = min(2W + 1, F) consecutive key frames from f − W (the
       start moved inside 0 … F − K at the edge frames) with a constant index: keys
       (B·F, h, T + K·S, d) and a constant additive mask (F, 1, 1, T + K·S), 0 where a key is within
       ±W frames, the dtype's lowest value elsewhere (edge frames only), so masked keys get
       probability exactly 0;
     - W ≥ F − 1 is every frame: the head stays dense;
     - text queries (T > 0): one attention over all keys.
  Rotary embeddings and norms are applied to q and k before the kernel, so the rewrite sees them
  already applied.

Math: softmax over the kept keys equals softmax over all keys with −∞ at the others, so the program
equals the original model with a block-banded attention mask (tests/passes/test_window_attention.py
checks it against diffusers' own processor given that mask). Attention-core FLOPs of a W head fall
from (T + F·S)² to T·(T + F·S) + F·S·(T + K·S), K = min(2W + 1, F).

Pruned heads of a spatiotemporal unit are rewritten here too (not by `prune_heads`, which slices
projection rows: Wan normalises q and k over all heads together, so their projections stay whole):
the pruned heads go last in the permutation, the kernels run on the kept heads only, and the output
projection loses the pruned heads' columns — exactly the model with those heads' outputs zeroed
before the output projection (its bias stays). Their attention core and output-projection FLOPs go.

Must not fire on temporal units (they have no spatial tokens). Idempotent: a rewritten unit's
kernels carry `meta["f3_window"]` and are left alone.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import F3Error
from .base import (PassResult, RewriteSpec, aten, get_attr_tensor, graph_pass, linear_of, region, set_attr_tensor,
                   shape_of)

_LINEAR_BY_ROWS = ("to_q", "to_k", "to_v")
_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def head_groups(windows: tuple[int | None, ...]) -> list[tuple[int | None, list[int]]]:
    """[(window, heads)] in program order: dense heads first (None), then by window."""
    groups: dict[int | None, list[int]] = {}
    for head, window in enumerate(windows):
        groups.setdefault(window, []).append(head)
    return sorted(groups.items(), key=lambda item: -1 if item[0] is None else item[0])


def window_slots(frames: int, window: int) -> int:
    """Key frames gathered per query frame: 2W + 1, at most all F."""
    return min(2 * window + 1, frames)


def window_frames(frames: int, window: int) -> tuple[list[int], list[list[bool]]]:
    """(flat key-frame index, valid[f][j]) for each query frame f and slot j.

    Query frame f gathers K = `window_slots` consecutive frames starting at f − W, the start moved
    inside 0 … F − K at the edges (so no frame is gathered twice); a gathered frame farther than W
    from f is masked (`valid` False)."""
    slots = window_slots(frames, window)
    index, valid = [], []
    for frame in range(frames):
        start = min(max(frame - window, 0), frames - slots)
        index += [start + slot for slot in range(slots)]
        valid.append([abs(start + slot - frame) <= window for slot in range(slots)])
    return index, valid


def _device(node: fx.Node) -> torch.device:
    value = node.meta.get("val")
    return value.device if isinstance(value, torch.Tensor) else torch.device("cpu")


def _dtype(node: fx.Node) -> torch.dtype:
    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else torch.float32


def _permute_weights(gm: fx.GraphModule, nodes: list[fx.Node], unit, order: list[int], prefix: str) -> None:
    """Rows of q/k/v (and per-channel norms over all heads), columns of the output projection."""
    d = unit.head_dim
    rows = torch.tensor([head * d + i for head in order for i in range(d)], dtype=torch.long)
    width = unit.heads * d
    linears = {name: linear_of(nodes, f"{unit.id}.{name}", prefix) for name in (*_LINEAR_BY_ROWS, "to_out.0")}
    if any(node is None for node in linears.values()):
        raise F3Error(f"{unit.id}: could not find its q/k/v/out projections in the graph; windows need them")
    out = linears.pop("to_out.0")
    out_params = {arg for arg in out.args[1:] if isinstance(arg, fx.Node)}
    done: set[str] = set()
    for node in nodes:  # every per-channel tensor of width H·d the unit reads (not the output projection's)
        for arg in node.args:
            if not isinstance(arg, fx.Node) or arg.op != "get_attr" or arg in out_params or arg.target in done:
                continue
            tensor = get_attr_tensor(gm, arg)
            if tensor.ndim in (1, 2) and tensor.shape[0] == width:
                set_attr_tensor(gm, arg, tensor.detach().index_select(0, rows.to(tensor.device)).contiguous())
                done.add(arg.target)
    weight = out.args[1]
    tensor = get_attr_tensor(gm, weight)
    set_attr_tensor(gm, weight, tensor.detach().index_select(1, rows.to(tensor.device)).contiguous())
    if not {linears[name].args[1].target for name in _LINEAR_BY_ROWS} <= done:
        raise F3Error(f"{unit.id}: its q/k/v weights are not {width} rows wide; windows need them")


class _Emit:
    """Appends nodes before `anchor`."""

    def __init__(self, gm: fx.GraphModule, anchor: fx.Node, prefix: str):
        self.gm, self.graph, self.anchor, self.prefix = gm, gm.graph, anchor, prefix

    def __call__(self, target, *args, **kwargs) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            return self.graph.call_function(target, args, kwargs)

    def constant(self, name: str, value: torch.Tensor) -> fx.Node:
        attr = f"{self.prefix}{name}"
        self.gm.register_buffer(attr, value, persistent=True)
        with self.graph.inserting_before(self.anchor):
            return self.graph.get_attr(attr)


def _video(emit: _Emit, x: fx.Node, text: int, length: int) -> fx.Node:
    return x if text == 0 else emit(aten.slice.Tensor, x, 2, text, length)


def _frames_first(emit: _Emit, x: fx.Node, heads: int, frames: int, tokens: int, dim: int) -> fx.Node:
    """(B, h, F·S, d) → (B, F, h, S, d)."""
    return emit(aten.permute.default, emit(aten.reshape.default, x, [-1, heads, frames, tokens, dim]), [0, 2, 1, 3, 4])


def _with_text(emit: _Emit, keys: fx.Node, source: fx.Node, text: int, frames: int) -> fx.Node:
    """Prepend the T text keys (B, h, T, d) of `source` to every frame's keys (B, F, h, ·, d)."""
    if text == 0:
        return keys
    text_keys = emit(aten.slice.Tensor, source, 2, 0, text)
    text_keys = emit(aten.expand.default, emit(aten.unsqueeze.default, text_keys, 1), [-1, frames, -1, -1, -1])
    return emit(aten.cat.default, [text_keys, keys], 3)


def _windowed(emit: _Emit, q, k, v, unit, heads: int, window: int, scale, tag: str) -> fx.Node:
    """Attention of one group of `heads` heads at `window`: (B, h, T + F·S, d) → same shape."""
    text, frames, tokens, dim = unit.text_tokens, unit.frames, unit.tokens, unit.head_dim
    length = text + frames * tokens
    qv, kv, vv = (_video(emit, x, text, length) for x in (q, k, v))
    queries = emit(aten.reshape.default, _frames_first(emit, qv, heads, frames, tokens, dim), [-1, heads, tokens, dim])
    mask = None
    if window == 0:
        keys, values = (_frames_first(emit, x, heads, frames, tokens, dim) for x in (kv, vv))
        span = tokens
    else:
        slots = window_slots(frames, window)
        index, valid = window_frames(frames, window)
        device = _device(q)
        index_node = emit.constant(f"{tag}_frames", torch.tensor(index, dtype=torch.long, device=device))

        def gather(x):  # (B, h, F·S, d) → (B, F, h, K·S, d)
            x = emit(aten.reshape.default, x, [-1, heads, frames, tokens, dim])
            x = emit(aten.index_select.default, x, 2, index_node)  # (B, h, F·K, S, d)
            x = emit(aten.reshape.default, x, [-1, heads, frames, slots * tokens, dim])
            return emit(aten.permute.default, x, [0, 2, 1, 3, 4])

        keys, values = gather(kv), gather(vv)
        span = slots * tokens
        dtype = _dtype(q)
        lowest = torch.finfo(dtype).min
        allowed = torch.tensor(valid, dtype=torch.bool).repeat_interleave(tokens, dim=1)  # (F, K·S)
        additive = torch.zeros(frames, text + span, dtype=dtype)
        additive[:, text:] = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), lowest, dtype=dtype))
        constant = emit.constant(f"{tag}_mask", additive.reshape(1, frames, 1, 1, text + span).to(device))
        batch = emit(aten.sym_size.int, q, 0)
        mask = emit(aten.reshape.default, emit(aten.expand.default, constant, [batch, frames, 1, 1, text + span]),
                    [-1, 1, 1, text + span])
    keys, values = (_with_text(emit, x, source, text, frames) for x, source in ((keys, k), (values, v)))
    keys, values = (emit(aten.reshape.default, x, [-1, heads, text + span, dim]) for x in (keys, values))
    out = emit(aten.scaled_dot_product_attention.default, queries, keys, values, mask, scale=scale)
    out = emit(aten.permute.default, emit(aten.reshape.default, out, [-1, frames, heads, tokens, dim]), [0, 2, 1, 3, 4])
    out = emit(aten.reshape.default, out, [-1, heads, frames * tokens, dim])
    if text:
        text_out = emit(aten.scaled_dot_product_attention.default, emit(aten.slice.Tensor, q, 2, 0, text), k, v,
                        scale=scale)
        out = emit(aten.cat.default, [text_out, out], 2)
    return out


def _sdpa_scale(node: fx.Node):
    """The kernel's explicit scale (None: 1/√d); refuses masks, dropout and causal kernels."""
    names = ("attn_mask", "dropout_p", "is_causal", "scale")
    given = dict(zip(names, node.args[3:])) | {k: v for k, v in node.kwargs.items() if k in names}
    if given.get("attn_mask") is not None or given.get("dropout_p", 0.0) or given.get("is_causal", False):
        raise F3Error(f"{node.name}: the attention already has a mask, dropout or causal order; windows need a plain kernel")
    return given.get("scale")


@graph_pass("unit_rewrites.windows, unit_rewrites.pruned_heads of full 3-D attention")
def window_attention(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    planned = dict(spec.windows)
    for unit_id in spec.prune_heads:  # pruned heads of full 3-D attention: their kernels go here
        if spec.units[unit_id].spatiotemporal and unit_id not in planned:
            planned[unit_id] = (None,) * spec.units[unit_id].heads
    for unit_id, windows in planned.items():
        unit = spec.units[unit_id]
        pruned = set(spec.prune_heads.get(unit_id, ()))
        if spec.removed(unit_id) or (all(w is None for w in windows) and not pruned):
            continue
        if not unit.spatiotemporal:
            raise F3Error(f"{unit_id} is a temporal attention (no spatial tokens); windows apply to full 3-D attention")
        if len(windows) != unit.heads:
            raise F3Error(f"{unit_id}: {len(windows)} windows for {unit.heads} heads")
        if len(pruned) == unit.heads:
            raise F3Error(f"{unit_id}: every head pruned; drop the attention instead (--granularity attention)")
        nodes = region(gm.graph, unit_id, spec.prefix)
        kernels = [n for n in nodes if n.target == aten.scaled_dot_product_attention.default]
        if not kernels or any(n.meta.get("f3_window") for n in nodes):
            continue  # removed, or rewritten already
        if len(kernels) != 1:
            raise F3Error(f"{unit_id} has {len(kernels)} attention kernels; windows need exactly one")
        kernel = kernels[0]
        scale = _sdpa_scale(kernel)
        kept = tuple(None if w is not None and w >= unit.frames - 1 else w for h, w in enumerate(windows) if h not in pruned)
        kept_heads = [h for h in range(unit.heads) if h not in pruned]
        groups = [(w, [kept_heads[i] for i in heads]) for w, heads in head_groups(kept)]
        order = [head for _, heads in groups for head in heads] + sorted(pruned)  # pruned heads last
        if order != list(range(unit.heads)):
            _permute_weights(gm, nodes, unit, order, spec.prefix)
        if pruned:  # the output projection keeps the kept heads' columns (the first after the permutation)
            out = linear_of(nodes, f"{unit_id}.to_out.0", spec.prefix)
            weight = get_attr_tensor(gm, out.args[1])
            set_attr_tensor(gm, out.args[1], weight.detach()[:, : len(kept_heads) * unit.head_dim].contiguous())
            width = unit.heads * unit.head_dim
            for node in nodes:  # (B, N, heads, d) -> (B, N, heads·d) written with the full width (CogVideoX)
                source = shape_of(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
                if node.target in _RESHAPES and source is not None and len(source) == 4 \
                        and source[-2:] == (unit.heads, unit.head_dim) and list(node.args[1])[-1] == width:
                    node.args = (node.args[0], list(node.args[1])[:-1] + [len(kept_heads) * unit.head_dim])
        q, k, v = kernel.args[:3]
        emit = _Emit(gm, kernel, "f3_window__" + unit_id.replace(".", "_") + "__")
        outputs, start = [], 0
        for number, (window, heads) in enumerate(groups):
            end = start + len(heads)
            whole = len(groups) == 1 and not pruned
            part = [x if whole else emit(aten.slice.Tensor, x, 1, start, end) for x in (q, k, v)]
            if window is None:
                out = emit(aten.scaled_dot_product_attention.default, *part, scale=scale)
            else:
                out = _windowed(emit, *part, unit, len(heads), window, scale, f"group{number}")
            outputs.append(out)
            start = end
        result = outputs[0] if len(outputs) == 1 else emit(aten.cat.default, outputs, 1)
        kernel.replace_all_uses_with(result)
        stack = kernel.meta.get("nn_module_stack")
        gm.graph.erase_node(kernel)
        for node in _created(gm.graph, result):  # tagged with the unit: idempotence, and audits by module path
            node.meta["f3_window"] = unit_id
            if stack is not None:
                node.meta["nn_module_stack"] = dict(stack)
        modified = True
    return PassResult(gm, modified)


def _created(graph: fx.Graph, result: fx.Node) -> list[fx.Node]:
    """The nodes feeding `result` that the rewrite made (no module stack of their own yet)."""
    found, stack, seen = [], [result], set()
    while stack:
        node = stack.pop()
        if node in seen or node.op not in ("call_function", "get_attr"):
            continue
        seen.add(node)
        if node.meta.get("nn_module_stack") and node is not result:
            continue
        found.append(node)
        stack.extend(node.all_input_nodes)
    return found
