"""drop_temporal_blocks: a pruned temporal block contributes nothing: output = input.

Before: x ─▶ [block: norm, proj_in, attention(s), ff, proj_out, + x] ─▶ y
After:  x ─▶ y (every use of the block's output now uses its input; the block's nodes and
        weights become dead and are removed by cleanup).

The block's input is the tensor entering the block with the output's shape and dtype; a block
with several outputs, or no unique such input, is an error. Blocks not in the plan are untouched.
"""

from __future__ import annotations

from torch import fx

from ..errors import F3Error
from .base import PassContext, PassResult, dtype_of, region, region_inputs, region_outputs, shape_of


def drop_temporal_blocks(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    modified = False
    for block in ctx.stage.drop_blocks:
        nodes = region(gm.graph, block, ctx.prefix)
        outputs = region_outputs(nodes)
        if not outputs:
            continue  # already dropped
        if len(outputs) != 1:
            raise F3Error(f"temporal block {block} has {len(outputs)} outputs in the graph; it cannot be dropped as a whole")
        output = outputs[0]
        candidates = [n for n in region_inputs(nodes)
                      if shape_of(n) == shape_of(output) and dtype_of(n) == dtype_of(output)]
        if len(candidates) != 1:
            raise F3Error(f"temporal block {block} has no unique input shaped like its output {shape_of(output)}")
        output.replace_all_uses_with(candidates[0])
        modified = True
    return PassResult(modified)
