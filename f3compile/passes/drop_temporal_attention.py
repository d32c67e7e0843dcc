"""drop_temporal_attention: remove a temporal attention's residual branch: h = h.

Before: h ─▶ norm ─▶ attention ─▶ (gate ×) ─▶ + h
After:  the attention's output is a known zero; cleanup folds `0 × gate` and `0 + h` so the
        consumer reads h directly, and the norm, projections and weights become dead.

Only units in `drop_attention` (outside dropped blocks) are touched.
"""

from __future__ import annotations

from torch import fx

from .base import PassResult, RewriteSpec, graph_pass, new_zeros_like, region_inputs, shape_of, single_output


@graph_pass("unit_rewrites.drop")
def drop_temporal_attention(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    for unit_id in spec.drop_attention:
        if spec.units[unit_id].block in spec.drop_blocks:
            continue  # the whole block is gone already
        nodes, output = single_output(gm.graph, unit_id, spec.prefix, "temporal attention")
        if output is None:
            continue  # already dropped
        reference = region_inputs(nodes)[0]
        zero = new_zeros_like(gm.graph, reference, shape_of(output), before=output)
        output.replace_all_uses_with(zero)
        modified = True
    return PassResult(gm, modified)
