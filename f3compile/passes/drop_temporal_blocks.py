"""drop_temporal_blocks: a pruned temporal block contributes nothing: output = input.

Before: x ─▶ [block: norm, proj_in, attention(s), ff, proj_out, + x] ─▶ y
After:  x ─▶ y (every use of the block's output now uses its input; the block's nodes and
        weights become dead and are removed by cleanup).

The block's input is the tensor entering the block with the output's shape and dtype; a block
with several outputs, or no unique such input, is an error. Blocks not in the plan are untouched.

Where no module holds the attention and nothing else (Tune-A-Video: ``attn_temp`` sits in the
same transformer block as the spatial attentions, its residual add outside any module), discovery
makes the attention its own block; dropping it removes its residual branch, exactly as
`drop_temporal_attention` does (the branch contributes nothing: output = input of the residual).
"""

from __future__ import annotations

from torch import fx

from .base import (PassResult, RewriteSpec, block_input, graph_pass, new_zeros_like, region_inputs, shape_of,
                   single_output)


@graph_pass("block_rewrites.drop")
def drop_temporal_blocks(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    for block in spec.drop_blocks:
        nodes, output = single_output(gm.graph, block, spec.prefix, "temporal block")
        if output is None:
            continue  # already dropped
        if block in spec.units:  # an attention that is its own block: its residual branch goes
            reference = region_inputs(nodes)[0]
            output.replace_all_uses_with(new_zeros_like(gm.graph, reference, shape_of(output), before=output))
            modified = True
            continue
        output.replace_all_uses_with(block_input(nodes, output, block))
        modified = True
    return PassResult(gm, modified)
