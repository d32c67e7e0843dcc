"""Pruning plans: scores, selection, the plan.json schema, cost accounting and inspection."""

from .plan import GRANULARITIES, PruningPlan, Stage, make_plan

__all__ = ["GRANULARITIES", "PruningPlan", "Stage", "make_plan"]
