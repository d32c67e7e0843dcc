"""Graph passes over torch.export programs, one per file, registered in pipeline order.

`PassManager()` runs the registered pipeline (`f3compile compile --list-passes` prints it); a new
pass registers with `register_pass(fn, before=..., after=...)` (docs/ARCHITECTURE.md).
"""

from .annotate_temporal_attention import annotate_temporal_attention
from .base import (PIPELINE, BlockRewrite, GraphPass, PassManager, PassResult, RewriteSpec, UnitRewrite, graph_pass,
                   register_pass)
from .cleanup import cleanup, run_cleanup
from .drop_temporal_attention import drop_temporal_attention
from .drop_temporal_blocks import drop_temporal_blocks
from .gather_key_frames import gather_key_frames
from .prune_heads import prune_heads
from .reuse_temporal_blocks import reuse_temporal_blocks
from .window_attention import window_attention

for _pass in (annotate_temporal_attention, reuse_temporal_blocks, drop_temporal_blocks, drop_temporal_attention,
              prune_heads, gather_key_frames, window_attention, cleanup):
    register_pass(_pass)

__all__ = [
    "PIPELINE", "BlockRewrite", "GraphPass", "PassManager", "PassResult", "RewriteSpec", "UnitRewrite",
    "annotate_temporal_attention", "cleanup", "drop_temporal_attention", "drop_temporal_blocks", "gather_key_frames",
    "graph_pass", "prune_heads", "register_pass", "reuse_temporal_blocks", "run_cleanup", "window_attention",
]
