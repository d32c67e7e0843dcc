"""A plan run inside the user's own pipeline object (`f3compile.apply`): processors, block forwards
and a weight permutation installed on the live modules, and removed exactly."""

from .apply import Applied, PlanState, install

__all__ = ["Applied", "PlanState", "install"]
