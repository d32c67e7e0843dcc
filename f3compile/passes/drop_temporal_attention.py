"""drop_temporal_attention: remove a temporal attention's residual branch: h = h.

Before: h ─▶ norm ─▶ attention ─▶ (gate ×) ─▶ + h
After:  the attention's output is a known zero; cleanup folds `0 × gate` and `0 + h` so the
        consumer reads h directly, and the norm, projections and weights become dead.

Only units in `drop_attention` (outside dropped blocks) are touched.
"""

from __future__ import annotations

from torch import fx

from ..errors import F3Error
from .base import PassContext, PassResult, new_zeros_like, region, region_inputs, region_outputs, shape_of


def drop_temporal_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    modified = False
    for unit_id in ctx.stage.drop_attention:
        if ctx.units[unit_id].block in ctx.stage.drop_blocks:
            continue
        nodes = region(gm.graph, unit_id, ctx.prefix)
        outputs = region_outputs(nodes)
        if not outputs:
            continue  # already dropped
        if len(outputs) != 1:
            raise F3Error(f"temporal attention {unit_id} has {len(outputs)} outputs in the graph; cannot drop it")
        output = outputs[0]
        reference = region_inputs(nodes)[0]
        zero = new_zeros_like(gm.graph, reference, shape_of(output), before=output)
        output.replace_all_uses_with(zero)
        modified = True
    return PassResult(modified)
