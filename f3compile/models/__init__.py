"""Model loading, normalization and temporal-attention discovery."""

from .base import DenoiseModule, TemporalBlock, TemporalUnit, VideoModel, VideoShapes
from .discovery import find_temporal_units, temporal_blocks
from .loading import load_model

__all__ = [
    "DenoiseModule", "TemporalBlock", "TemporalUnit", "VideoModel", "VideoShapes",
    "find_temporal_units", "temporal_blocks", "load_model",
]
