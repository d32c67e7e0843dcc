"""reuse_temporal_blocks: temporal reuse: a block's residual from an earlier step replaces its work.

A stage that reuses blocks (a plan's `reuse: {block: k}`, k > 1) is built as several static
programs, one per pattern of reused blocks; this pass makes one of them from the spec's
`block_rewrites[block].residual`:
"returned" (the program computes the block):  y = block(x) as before, and r = y − x becomes an
                                              extra output;
"given" (the program reuses it):              y = x + r with r an extra input; the block's nodes
                                              and weights become dead and are removed by cleanup.
An attention that is its own block (its residual add outside any module) has the branch as its
residual: r = attention(…) is output, and the reused branch is r itself.

I/O is appended to the flat signature in the spec's (the plan's) order: inputs `residual_<n>` after sample, timestep
and encoder_hidden_states; outputs after noise_pred (the manifest names them `residual.<block>`).
It runs before the other passes, on the graph as captured, so every block is still whole.
"""

from __future__ import annotations

from torch import fx

from .base import (PassResult, RewriteSpec, aten, block_input, dtype_of, extend_signature, graph_pass, shape_of,
                   single_output)


@graph_pass("block_rewrites.residual")
def reuse_temporal_blocks(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    blocks = spec.carried_blocks
    if not blocks:
        return PassResult(gm, False)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    inputs: list[tuple[str, fx.Node]] = []
    outputs: list[fx.Node] = []
    for block in blocks:
        nodes, output = single_output(graph, block, spec.prefix, "temporal block")
        own = block in spec.units  # an attention that is its own block
        source = None if own else block_input(nodes, output, block)
        if block in spec.reused:
            name = f"residual_{len(inputs)}"
            with graph.inserting_after(placeholders[-1] if not inputs else inputs[-1][1]):
                residual = graph.placeholder(name)
            _like(residual, output)
            if own:
                output.replace_all_uses_with(residual)
            else:
                with graph.inserting_after(output):
                    reused = _like(graph.call_function(aten.add.Tensor, (source, residual)), output)
                output.replace_all_uses_with(reused)
            inputs.append((name, residual))
        elif own:
            outputs.append(output)
        else:
            with graph.inserting_after(output):
                outputs.append(_like(graph.call_function(aten.sub.Tensor, (output, source)), output))
    extend_signature(gm, inputs, outputs)
    return PassResult(gm, True)


def _like(node: fx.Node, output: fx.Node) -> fx.Node:
    """Tag a new node with the shape and dtype of the block output it stands for."""
    node.meta["f3_shape"], node.meta["f3_dtype"] = shape_of(output), dtype_of(output)
    return node
