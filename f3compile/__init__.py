"""f3compile: training-free temporal-attention pruning compiler for text-to-video models.

The public API (`f3compile.api`, re-exported here) has the verbs of the CLI — `load`, `calibrate`,
`merge`, `plan`, `inspect`, `compile`, `export`, `Runtime`, `generate`, `bench`, `evaluate` — for every kind
of model, with typed options, and `apply`, which runs a plan inside a diffusers pipeline object in
place. Heavy submodules are imported on first use, so `import f3compile` and `f3compile --help`
stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import F3Error

__version__ = "0.1.0"

_LAZY = {
    # the verbs
    **{name: ".api" for name in ("load", "kind_of", "calibrate", "merge", "plan", "inspect", "compile", "export", "Runtime",
                                 "generate", "bench", "evaluate", "convert", "list_passes", "read_plan", "apply")},
    # their options
    **{name: ".options" for name in ("PlanOptions", "CompileOptions", "GenerateOptions", "BenchOptions", "Shapes",
                                     "SweepOptions")},
    "CalibrationConfig": ".calibration",
    "ExportConfig": ".exporters",
    "EvalConfig": ".evaluation",
    # what they return and take
    "CalibrationStats": ".calibration",
    "PruningPlan": ".planning",
    "CompiledModel": ".compiler",
    "VideoModel": ".models",
    "VideoShapes": ".models",
    "TemporalUnit": ".models",
    # the stage functions underneath (diffusion models)
    "load_model": ".models",
    "find_temporal_units": ".models",
    "read_prompts": ".calibration",
    "Prompt": ".models.base",  # a prompt with the image an image-to-video model starts from
    "make_plan": ".planning",
    "compile_to_dir": ".compiler",
}

__all__ = ["F3Error", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'f3compile' has no attribute {name!r}")
