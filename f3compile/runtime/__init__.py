"""The deployment runtime: runs build artifacts from their manifest (torch, onnxruntime, TensorRT).

Importing it does not import calibration, passes or exporters.
"""

from .pipeline import Runtime, save_video

__all__ = ["Runtime", "save_video"]
