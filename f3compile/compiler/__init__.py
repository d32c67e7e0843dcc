"""The compiler: capture with torch.export, prune with graph passes, save per-stage programs."""

from .compile import CompiledStage, capture, compile, compile_to_dir
from .pipeline import describe_pipeline, run_pipeline

__all__ = ["CompiledStage", "capture", "compile", "compile_to_dir", "describe_pipeline", "run_pipeline"]
