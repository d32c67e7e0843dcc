"""prune_heads: delete pruned heads' q/k/v rows and output-projection columns.

Math (per unit, heads H, head size d, kept heads K ⊂ {0..H-1}):
    rows(K) = ∪_{h∈K} [h·d, (h+1)·d)
    W_q, W_k, W_v (and biases) ← rows(K);   W_out ← columns rows(K);   b_out unchanged
    reshapes (N, F, H, d) → (N, F, |K|, d) and (N, F, H·d) → (N, F, |K|·d)
This equals zeroing the pruned heads' outputs before the output projection. With every head
pruned the attention's output is b_out broadcast (its input is a known zero, folded by cleanup).

The unit's linears record the kept heads (`meta["f3_kept_heads"]`), so applying the pass again
changes nothing. Units outside `prune_heads`, or inside dropped blocks/attentions, are untouched, and
so are spatiotemporal units (full 3-D attention), whose heads `window_attention` prunes.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import F3Error
from .base import (PassResult, RewriteSpec, aten, get_attr_tensor, graph_pass, linear_of, new_zeros_like, region,
                   set_attr_tensor, shape_of)

_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _slice_rows(gm, node, rows: torch.Tensor, dim: int) -> None:
    tensor = get_attr_tensor(gm, node)
    # the index lives where the weight lives (cuda, meta, ...): a CPU index on a CUDA weight fails
    set_attr_tensor(gm, node, tensor.detach().index_select(dim, rows.to(tensor.device)).contiguous())


@graph_pass("unit_rewrites.pruned_heads")
def prune_heads(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    for unit_id, pruned in spec.prune_heads.items():
        unit = spec.units[unit_id]
        if spec.removed(unit_id) or unit.spatiotemporal:  # full 3-D attention: `window_attention` prunes at the kernel
            continue
        nodes = region(gm.graph, unit_id, spec.prefix)
        if not nodes:
            continue
        linears = {name: linear_of(nodes, f"{unit_id}.{name}", spec.prefix) for name in ("to_q", "to_k", "to_v", "to_out.0")}
        if len(pruned) == unit.heads and linears["to_q"] is None:
            continue  # every head already pruned: q/k/v are gone, only the output bias is left
        if any(node is None for node in linears.values()):
            raise F3Error(f"{unit_id}: could not find its q/k/v/out projections in the graph; head pruning needs them")
        kept = [h for h in range(unit.heads) if h not in set(pruned)]
        if linears["to_q"].meta.get("f3_kept_heads") is not None:
            continue  # already pruned
        d = unit.head_dim
        rows = torch.tensor([h * d + i for h in kept for i in range(d)], dtype=torch.long)
        out = linears["to_out.0"]
        if not kept:
            # every head pruned: the output projection sees zeros and yields its bias
            # the zero refers to the unit's input (not to q/k/v, which must become dead)
            source, unit_input = out.args[0], linears["to_q"].args[0]
            zero = new_zeros_like(gm.graph, unit_input, shape_of(source), before=out)
            out.replace_input_with(source, zero)
            linears["to_q"].meta["f3_kept_heads"] = []
            modified = True
            continue
        for name in ("to_q", "to_k", "to_v"):
            node = linears[name]
            _slice_rows(gm, node.args[1], rows, 0)
            if len(node.args) > 2 and node.args[2] is not None:
                _slice_rows(gm, node.args[2], rows, 0)
        _slice_rows(gm, out.args[1], rows, 1)
        for node in nodes:
            if node.target not in _RESHAPES:
                continue
            shape = shape_of(node)
            if shape is None:
                continue
            target = list(node.args[1])
            if len(shape) == 4 and shape[-2:] == (unit.heads, d) and target[-2] in (unit.heads, -1):
                target[-2] = len(kept) if target[-2] != -1 else -1
            elif len(shape) == 3 and shape[-1] == unit.heads * d and len(shape_of(node.args[0]) or ()) == 4:
                target[-1] = len(kept) * d
            else:
                continue
            node.args = (node.args[0], target)
        linears["to_q"].meta["f3_kept_heads"] = kept
        modified = True
    return PassResult(gm, modified)
