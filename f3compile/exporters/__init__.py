"""Exporters: ONNX, TensorRT and Triton artifacts, each verified against a reference runtime."""

from .export import ExportConfig, export

__all__ = ["ExportConfig", "export"]
