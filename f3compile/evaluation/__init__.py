"""Quality evaluation of dense vs pruned models on the moving-shapes domain (`f3compile eval`)."""

from .evaluate import EvalConfig, Variant, default_prompts, evaluate, read_eval_prompts
from .report import markdown, write_report

__all__ = ["EvalConfig", "Variant", "default_prompts", "evaluate", "read_eval_prompts", "markdown", "write_report"]
