"""Run the ordered pass pipeline on one graph; a failure names the pass that failed."""

from __future__ import annotations

from torch import fx

from ..errors import F3Error
from ..passes import PIPELINE, PassContext


def describe_pipeline() -> str:
    """The pipeline as printed by `f3compile compile --list-passes`: name and first doc line."""
    import importlib

    lines = []
    for number, graph_pass in enumerate(PIPELINE, 1):
        doc = (importlib.import_module(graph_pass.__module__).__doc__ or "").strip().splitlines()[0]
        lines.append(f"{number}. {graph_pass.__name__:<28} {doc.split(':', 1)[-1].strip()}")
    return "\n".join(lines)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext) -> dict[str, bool]:
    """Apply every pass in order; returns pass name -> modified."""
    results = {}
    for graph_pass in PIPELINE:
        try:
            results[graph_pass.__name__] = graph_pass(gm, ctx).modified
        except F3Error as exc:
            raise F3Error(f"pass {graph_pass.__name__}: {exc}") from None
        except Exception as exc:  # a bug: keep the traceback, but say where it happened
            raise RuntimeError(f"pass {graph_pass.__name__} failed: {exc}") from exc
    return results
