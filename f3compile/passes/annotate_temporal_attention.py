"""annotate_temporal_attention: tag each temporal unit's attention node in the graph.

Before: `scaled_dot_product_attention` nodes known only by their module path.
After:  the nodes of discovered temporal units carry `meta["f3_unit"] = <unit id>`.

The frame axis is confirmed from shapes: the query is (N, heads, frames, head_dim) with the
unit's head count and the plan's frame count (a spatiotemporal unit: (B, heads, text + frames ×
tokens, head_dim)). A unit planned for head or frame pruning that is
missing from the graph, or
whose attention does not run over the frame axis at these shapes, is an error. Spatial and
cross-attention nodes, and units not in discovery, are never tagged.
"""

from __future__ import annotations

from torch import fx

from ..errors import F3Error
from .base import PassResult, RewriteSpec, aten, graph_pass, innermost, shape_of


@graph_pass("units (tags attention nodes; checks the planned ones exist)", annotates_only=True)
def annotate_temporal_attention(gm: fx.GraphModule, spec: RewriteSpec) -> PassResult:
    modified = False
    found: set[str] = set()
    for node in gm.graph.nodes:
        if node.target != aten.scaled_dot_product_attention.default:
            continue
        unit = spec.units.get(innermost(node, spec.prefix) or "")
        if unit is None:
            continue
        if node.meta.get("f3_window") == unit.id:  # a kernel of its windowed rewrite: checked when it was made
            found.add(unit.id)
            continue
        query = shape_of(node.args[0])
        if query is None or len(query) != 4 or query[1] != unit.heads or query[2] != unit.sequence:
            what = f"{unit.frames} frames" + (f" of {unit.tokens} tokens" if unit.spatiotemporal else "")
            raise F3Error(
                f"{unit.id} does not attend over {what} with {unit.heads} heads at these shapes "
                f"(query {query}); compile with the plan's --frames, --height and --width"
            )
        found.add(unit.id)
        if node.meta.get("f3_unit") != unit.id:
            node.meta["f3_unit"] = unit.id
            modified = True
    # units whose attention must still be in the graph for head or frame pruning (dropped
    # units may already be gone when the pipeline runs again)
    removed = set(spec.drop_attention) | {u for u in spec.units if spec.units[u].block in spec.drop_blocks}
    removed |= {u for u, heads in spec.prune_heads.items() if len(heads) == spec.units[u].heads}
    planned = (set(spec.prune_heads) | set(spec.keep_frames) | set(spec.windows)) - removed
    missing = sorted(planned - found)
    if missing:
        raise F3Error(f"planned unit(s) {', '.join(missing)} have no attention node in the exported graph")
    return PassResult(gm, modified)
