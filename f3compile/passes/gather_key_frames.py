"""gather_key_frames: keys and values come only from the kept frames.

Before: x (N, F, C) ─▶ to_k, to_v ─▶ softmax(q kᵀ/√d) v over all F key frames
After:  x ─▶ index_select(x, 1, kept) (N, |kept|, C) ─▶ to_k, to_v ─▶ attention over |kept| keys;
        queries still come from all F frames, so every frame still produces output.

The gather reads the projections' input, i.e. after any frame positional embedding has been
added. Indices are a constant buffer on the device of the graph's tensors. Idempotent: a projection already fed by the gather is left
alone. Units outside `keep_frames`, or inside dropped blocks/attentions, are untouched.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import F3Error
from .base import PassResult, RewriteSpec, aten, graph_pass, linear_of, region, shape_of


@graph_pass("unit_rewrites.kept_frames")
def gather_key_frames(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    for unit_id, kept in spec.keep_frames.items():
        unit = spec.units[unit_id]
        if spec.removed(unit_id):
            continue
        if len(spec.prune_heads.get(unit_id, ())) == unit.heads:
            continue  # no head left: keys and values are dead anyway
        nodes = region(gm.graph, unit_id, spec.prefix)
        if not nodes:
            continue
        k_proj = linear_of(nodes, f"{unit_id}.to_k", spec.prefix)
        v_proj = linear_of(nodes, f"{unit_id}.to_v", spec.prefix)
        if k_proj is None or v_proj is None:
            raise F3Error(f"{unit_id}: could not find its key/value projections in the graph; frame pruning needs them")
        if k_proj.args[0].meta.get("f3_gathered"):
            continue
        source = k_proj.args[0]
        shape = shape_of(source)
        if shape is None or len(shape) != 3 or shape[1] != unit.frames:
            raise F3Error(f"{unit_id}: key input {shape} does not have {unit.frames} frames on axis 1")
        name = "f3_keep_frames__" + unit_id.replace(".", "_")
        # the index buffer lives on the device of the tensor it gathers from (meta/cuda/cpu)
        value = source.meta.get("val")
        device = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
        gm.register_buffer(name, torch.tensor(list(kept), dtype=torch.long, device=device), persistent=True)
        first = next(n for n in gm.graph.nodes if n is k_proj or n is v_proj)
        with gm.graph.inserting_before(first):
            index = gm.graph.get_attr(name)
            gathered = gm.graph.call_function(aten.index_select.default, (source, 1, index))
        gathered.meta["f3_gathered"] = True
        gathered.meta["f3_shape"] = (shape[0], len(kept), shape[2])
        for proj in (k_proj, v_proj):
            if proj.args[0] is source:
                proj.replace_input_with(source, gathered)
        modified = True
    return PassResult(gm, modified)
