"""f3compile: training-free temporal-attention pruning compiler for text-to-video models.

The public API mirrors the CLI verbs. Heavy submodules are imported on first use, so
`import f3compile` and `f3compile --help` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import F3Error

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".models",
    "find_temporal_units": ".models",
    "VideoModel": ".models",
    "VideoShapes": ".models",
    "TemporalUnit": ".models",
    "calibrate": ".calibration",
    "CalibrationConfig": ".calibration",
    "CalibrationStats": ".calibration",
    "read_prompts": ".calibration",
    "make_plan": ".planning",
    "PruningPlan": ".planning",
    "compile": ".compiler",
    "compile_to_dir": ".compiler",
}

__all__ = ["F3Error", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'f3compile' has no attribute {name!r}")
