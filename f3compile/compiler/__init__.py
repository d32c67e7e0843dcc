"""The compiler: capture with torch.export, prune with graph passes, save per-stage programs."""

from .compile import CompiledModel, CompiledStage, capture, compile, compile_to_dir, rewrite_spec

__all__ = ["CompiledModel", "CompiledStage", "capture", "compile", "compile_to_dir", "rewrite_spec"]
