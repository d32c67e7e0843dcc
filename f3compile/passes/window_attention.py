"""window_attention: windowed heads of a spatiotemporal attention attend only to nearby frames.

A spatiotemporal unit's kernel runs on q, k, v (B, H, T + F·S, d): T text tokens first (CogVideoX,
HunyuanVideo 1.5; T = 0 for Wan), then F frames of S tokens, frame-major. A head with window W lets a
video query of frame f see the keys of frames g with |f − g| ≤ W, plus every text key; text queries
see all keys. A kernel may carry an additive key bias (B, 1, 1, T + F·S) (HunyuanVideo 1.5's padded
text keys at the dtype's lowest value, 0 on every other key): it goes with the keys, whole to the
dense heads and the text queries, its text part to every frame's text keys; its video part is 0 by
construction and not read. Any other mask is refused.

Before: one attention over the whole sequence for every head.
After:
  1. Heads are regrouped by window (dense heads, then W = 0, 1, …) by permuting the rows of the
     q/k/v projections (weights, biases, any per-channel q/k norm across heads — an RMS over all
     heads is invariant to their order — and the text's own `add_*_proj` of a joint attention) and
     the columns of the output projections (`to_out.0`, and the text's `to_add_out`) by the same
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
from ..windows import Geometry, Ops, grouped_attention, head_groups, head_rows, regroup, window_frames, window_slots
from .base import (PassResult, RewriteSpec, aten, get_attr_tensor, graph_pass, linear_of, region, set_attr_tensor,
                   shape_of)

__all__ = ["window_attention", "head_groups", "window_frames", "window_slots"]

_LINEAR_BY_ROWS = ("to_q", "to_k", "to_v")
_OUTPUTS = ("to_out.0", "to_add_out")  # the output projections (joint attention's context has its own)
_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _device(node: fx.Node) -> torch.device:
    value = node.meta.get("val")
    return value.device if isinstance(value, torch.Tensor) else torch.device("cpu")


def _dtype(node: fx.Node) -> torch.dtype:
    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else torch.float32


def _outputs(nodes: list[fx.Node], unit, prefix: str) -> list[fx.Node]:
    """The unit's output projections: `to_out.0`, and `to_add_out` where the context has its own."""
    found = [linear_of(nodes, f"{unit.id}.{name}", prefix) for name in _OUTPUTS]
    return [node for node in found if node is not None]


def _permute_weights(gm: fx.GraphModule, nodes: list[fx.Node], unit, order: tuple[int, ...], prefix: str) -> None:
    """Rows of q/k/v (the context's too: `add_*_proj`, and per-channel norms over all heads), columns
    of the output projections."""
    rows = head_rows(order, unit.head_dim)
    width = unit.heads * unit.head_dim
    linears = {name: linear_of(nodes, f"{unit.id}.{name}", prefix) for name in _LINEAR_BY_ROWS}
    outs = _outputs(nodes, unit, prefix)
    if any(node is None for node in linears.values()) or linear_of(nodes, f"{unit.id}.to_out.0", prefix) is None:
        raise F3Error(f"{unit.id}: could not find its q/k/v/out projections in the graph; windows need them")
    out_params = {arg for out in outs for arg in out.args[1:] if isinstance(arg, fx.Node)}
    done: set[str] = set()
    for node in nodes:  # every per-channel tensor of width H·d the unit reads (not the output projections')
        for arg in node.args:
            if not isinstance(arg, fx.Node) or arg.op != "get_attr" or arg in out_params or arg.target in done:
                continue
            tensor = get_attr_tensor(gm, arg)
            if tensor.ndim in (1, 2) and tensor.shape[0] == width:
                set_attr_tensor(gm, arg, tensor.detach().index_select(0, rows.to(tensor.device)).contiguous())
                done.add(arg.target)
    for out in outs:
        tensor = get_attr_tensor(gm, out.args[1])
        set_attr_tensor(gm, out.args[1], tensor.detach().index_select(1, rows.to(tensor.device)).contiguous())
    if not {linears[name].args[1].target for name in _LINEAR_BY_ROWS} <= done:
        raise F3Error(f"{unit.id}: its q/k/v weights are not {width} rows wide; windows need them")


class _GraphOps(Ops):
    """`windows.Ops` as graph nodes appended before `anchor` (constants as buffers of the module, one
    buffer per kind and key that every unit of the pass reads: `shared` maps them to buffer names)."""

    def __init__(self, gm: fx.GraphModule, anchor: fx.Node, shared: dict):
        self.gm, self.graph, self.anchor, self.shared = gm, gm.graph, anchor, shared

    def _emit(self, target, *args, **kwargs) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            return self.graph.call_function(target, args, kwargs)

    def reshape(self, x, shape):
        return self._emit(aten.reshape.default, x, shape)

    def permute(self, x, dims):
        return self._emit(aten.permute.default, x, dims)

    def slice(self, x, dim, start, end):
        return self._emit(aten.slice.Tensor, x, dim, start, end)

    def index_select(self, x, dim, index):
        return self._emit(aten.index_select.default, x, dim, index)

    def expand(self, x, shape):
        return self._emit(aten.expand.default, x, shape)

    def unsqueeze(self, x, dim):
        return self._emit(aten.unsqueeze.default, x, dim)

    def cat(self, xs, dim):
        return self._emit(aten.cat.default, xs, dim)

    def pad(self, x, right):
        return self._emit(aten.constant_pad_nd.default, x, [0, right], 0.0)

    def add(self, x, y):
        return self._emit(aten.add.Tensor, x, y)

    def sdpa(self, q, k, v, mask=None, scale=None):
        if mask is None:
            return self._emit(aten.scaled_dot_product_attention.default, q, k, v, scale=scale)
        return self._emit(aten.scaled_dot_product_attention.default, q, k, v, mask, scale=scale)

    def device(self, x):
        return _device(x)

    def dtype(self, x):
        return _dtype(x)

    def constant(self, kind, key, make):
        attr = self.shared.get((kind, key))
        if attr is None or not hasattr(self.gm, attr):  # new, or removed by a later clean-up of unused buffers
            number = 0
            while hasattr(self.gm, f"f3_window__{kind}{number}"):
                number += 1
            attr = self.shared[(kind, key)] = f"f3_window__{kind}{number}"
            self.gm.register_buffer(attr, make(), persistent=True)
        with self.graph.inserting_before(self.anchor):
            return self.graph.get_attr(attr)


def _sdpa_scale(node: fx.Node, unit):
    """(the kernel's explicit scale (None: 1/√d), its key bias or None); refuses dropout, causal
    kernels and masks other than an additive key bias (B, 1, 1, N) (HunyuanVideo 1.5's padded text)."""
    names = ("attn_mask", "dropout_p", "is_causal", "scale")
    given = dict(zip(names, node.args[3:])) | {k: v for k, v in node.kwargs.items() if k in names}
    mask = given.get("attn_mask")
    if mask is not None:
        value = mask.meta.get("val") if isinstance(mask, fx.Node) else None
        if not isinstance(value, torch.Tensor) or value.dtype == torch.bool or value.ndim != 4 \
                or tuple(value.shape[1:]) != (1, 1, unit.sequence):
            raise F3Error(f"{node.name}: the attention has a mask other than an additive key bias (B, 1, 1, "
                          f"{unit.sequence}); windows need a plain kernel or a key bias")
    if given.get("dropout_p", 0.0) or given.get("is_causal", False):
        raise F3Error(f"{node.name}: the attention has dropout or a causal order; windows need a plain kernel")
    return given.get("scale"), mask


@graph_pass("unit_rewrites.windows, unit_rewrites.pruned_heads of full 3-D attention")
def window_attention(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    planned = dict(spec.windows)
    constants = gm.__dict__.setdefault("_f3_window_constants", {})  # (kind, key) -> buffer name, across runs
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
        scale, bias = _sdpa_scale(kernel, unit)
        regrouping = regroup(windows, sorted(pruned), unit.heads, unit.frames)
        if regrouping.permuted:
            _permute_weights(gm, nodes, unit, regrouping.order, spec.prefix)
        kept_heads = regrouping.order[: regrouping.kept]
        if pruned:  # the output projections keep the kept heads' columns (the first after the permutation)
            for out in _outputs(nodes, unit, spec.prefix):
                weight = get_attr_tensor(gm, out.args[1])
                set_attr_tensor(gm, out.args[1], weight.detach()[:, : len(kept_heads) * unit.head_dim].contiguous())
            width = unit.heads * unit.head_dim
            for node in nodes:  # (B, N, heads, d) -> (B, N, heads·d) written with the full width (CogVideoX)
                source = shape_of(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
                if node.target in _RESHAPES and source is not None and len(source) == 4 \
                        and source[-2:] == (unit.heads, unit.head_dim) and list(node.args[1])[-1] == width:
                    node.args = (node.args[0], list(node.args[1])[:-1] + [len(kept_heads) * unit.head_dim])
        q, k, v = kernel.args[:3]
        ops = _GraphOps(gm, kernel, constants)
        geometry = Geometry(unit.text_tokens, unit.frames, unit.tokens, unit.head_dim)
        result = grouped_attention(ops, q, k, v, regrouping, geometry, scale, bias)
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
