"""Graph passes over torch.export programs, one per file, in pipeline order."""

from .annotate_temporal_attention import annotate_temporal_attention
from .base import GraphPass, PassContext, PassResult
from .cleanup import cleanup, run_cleanup
from .drop_temporal_attention import drop_temporal_attention
from .drop_temporal_blocks import drop_temporal_blocks
from .gather_key_frames import gather_key_frames
from .prune_heads import prune_heads
from .reuse_temporal_blocks import reuse_temporal_blocks

# The pipeline: one ordered list; `f3compile compile --list-passes` prints it.
PIPELINE: list[GraphPass] = [
    annotate_temporal_attention,
    reuse_temporal_blocks,
    drop_temporal_blocks,
    drop_temporal_attention,
    prune_heads,
    gather_key_frames,
    cleanup,
]

__all__ = [
    "PIPELINE", "GraphPass", "PassContext", "PassResult", "annotate_temporal_attention", "cleanup",
    "drop_temporal_attention", "drop_temporal_blocks", "gather_key_frames", "prune_heads", "reuse_temporal_blocks",
    "run_cleanup",
]
