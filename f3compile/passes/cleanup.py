"""cleanup: the one helper run after any mutation (and as the pipeline's last pass).

1. fold known zeros (`meta["f3_zero"]`), produced when a branch is removed:
     0 + h → h,  h + 0 → h,  h − 0 → h,  0 × g → 0,  0 / s → 0,
     view/reshape/permute/transpose/(un)squeeze/clone/dropout/to(0) → 0,
     linear(0, W, b) → b broadcast as 0 × x + b (0 without bias)
   so residual adds disappear instead of adding zeros at run time;
2. dead code elimination (shape/dtype assertions on dead tensors included);
3. unused parameters and buffers deleted from the module;
4. lint and recompile.
"""

from __future__ import annotations

from torch import fx

from .base import PassResult, RewriteSpec, aten, graph_pass, new_zeros_like, shape_of

_SHAPE_ONLY = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default, aten.transpose.int,
    aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default, aten.clone.default, aten.dropout.default,
    aten.contiguous.default, aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.alias.default,
    aten.flatten.using_ints, aten.expand.default,
}
_ASSERTS = {aten._assert_tensor_metadata.default}


def _is_zero(arg) -> bool:
    return isinstance(arg, fx.Node) and bool(arg.meta.get("f3_zero"))


def _replace(node: fx.Node, new: fx.Node) -> None:
    node.replace_all_uses_with(new)


def _broadcast_bias(graph: fx.Graph, zero: fx.Node, bias: fx.Node, shape: tuple[int, ...], before: fx.Node) -> fx.Node:
    """`bias` broadcast to `shape`, written as `0 × x + bias` with the tensor the zero stood in for.

    A plain `expand(bias)` is constant-folded by ONNX exporters into a full-size initializer
    (batch × tokens × channels of weights); tying it to a run-time tensor keeps it an
    elementwise op of one bias vector.
    """
    source = zero.args[0] if zero.args and isinstance(zero.args[0], fx.Node) else None
    with graph.inserting_before(before):
        if source is not None and shape_of(source) == tuple(shape):
            scaled = graph.call_function(aten.mul.Tensor, (source, 0.0))
            new = graph.call_function(aten.add.Tensor, (scaled, bias))
        else:
            new = graph.call_function(aten.expand.default, (bias, list(shape)))
    new.meta["f3_shape"] = tuple(shape)
    return new


def fold_zeros(gm: fx.GraphModule) -> bool:
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not any(_is_zero(a) for a in node.args):
            continue
        target, args = node.target, node.args
        out_shape = shape_of(node)
        if target in (aten.add.Tensor, aten.sub.Tensor) and len(args) == 2:
            a, b = args
            other = b if _is_zero(a) and target == aten.add.Tensor else a if _is_zero(b) else None
            if isinstance(other, fx.Node) and shape_of(other) == out_shape:
                _replace(node, other)
                changed = True
            elif _is_zero(a) and _is_zero(b) and out_shape is not None:
                _replace(node, new_zeros_like(gm.graph, a, out_shape, before=node))
                changed = True
        elif target in (aten.mul.Tensor, aten.div.Tensor) and out_shape is not None:
            zero = args[0] if _is_zero(args[0]) else (args[1] if target == aten.mul.Tensor and _is_zero(args[1]) else None)
            if zero is not None:
                _replace(node, new_zeros_like(gm.graph, zero, out_shape, before=node))
                changed = True
        elif target in _SHAPE_ONLY and _is_zero(args[0]) and out_shape is not None:
            _replace(node, new_zeros_like(gm.graph, args[0], out_shape, before=node))
            changed = True
        elif target == aten.linear.default and _is_zero(args[0]) and out_shape is not None:
            bias = args[2] if len(args) > 2 else None
            if bias is None:
                new = new_zeros_like(gm.graph, args[0], out_shape, before=node)
            else:
                new = _broadcast_bias(gm.graph, args[0], bias, out_shape, before=node)
            _replace(node, new)
            changed = True
    return changed


def _writes_in_place(node: fx.Node) -> bool:
    """An op that writes into one of its arguments (`copy_` into a slice of `empty_like`, as Wan's
    rotary embedding does): its result is unused but its effect is not."""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and schema.is_mutable


_VIEWS = {
    aten.slice.Tensor, aten.select.int, aten.view.default, aten._unsafe_view.default, aten.unflatten.int,
    aten.as_strided.default, aten.expand.default, aten.permute.default, aten.transpose.int, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.default, aten.alias.default,
}


def _write_is_dead(node: fx.Node) -> bool:
    """An in-place write nobody can see: it writes (through views) into a tensor that is otherwise
    only viewed and written, never read — what is left of a removed block's rotary embedding."""
    target = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    while target is not None and target.target in _VIEWS:
        target = target.args[0] if isinstance(target.args[0], fx.Node) else None
    if target is None or target.op != "call_function" or _writes_in_place(target):
        return False
    pending, seen = [target], set()
    while pending:  # every user of the buffer or of a view of it must be a view or an unused write
        current = pending.pop()
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            if user.target in _VIEWS:
                pending.append(user)
            elif not (_writes_in_place(user) and not user.users):
                return False
    return True


def eliminate_dead_code(gm: fx.GraphModule) -> bool:
    """Erase nodes whose results are unused.

    fx's own DCE keeps ops tagged nondeterministic (dropout, which is the identity in an eval
    graph) and metadata assertions; here every aten op of an export graph is functional except the
    in-place ones (kept while what they write into is read), and an assertion is dead when nothing
    but assertions reads the tensor it checks.
    """
    changed = False
    for node in reversed(list(gm.graph.nodes)):
        if node.op not in ("call_function", "get_attr") or node.users:
            continue
        if _writes_in_place(node) and not _write_is_dead(node):
            continue
        if node.target in _ASSERTS:
            checked = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            if checked is not None and not all(user.target in _ASSERTS for user in checked.users):
                continue
        gm.graph.erase_node(node)
        changed = True
    return changed


def _delete_unused_attributes(gm: fx.GraphModule) -> int:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    removed = 0
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            module = gm.get_submodule(owner) if owner else gm
            delattr(module, attr)
            removed += 1
    gm.delete_all_unused_submodules()
    return removed


def run_cleanup(gm: fx.GraphModule) -> bool:
    """Fold zeros, eliminate dead code and unused weights, lint and recompile. True if changed."""
    changed = False
    while True:
        step = fold_zeros(gm)
        step |= eliminate_dead_code(gm)
        if not step:
            break
        changed = True
    changed |= _delete_unused_attributes(gm) > 0
    gm.graph.lint()
    gm.recompile()
    return changed


@graph_pass("everything (known zeros, dead code, unused weights)")
def cleanup(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    return PassResult(gm, run_cleanup(gm))
