"""Cost: a $/h budget guard and Mélange-style GPU right-sizing (an integer program via scipy.optimize.milp)."""

from policies.cost.budget import BudgetDecision, BudgetGuard, BudgetParams
from policies.cost.rightsizing import (
    GpuOption,
    InfeasibleWorkload,
    MelangeRightsizer,
    RateSearch,
    RightsizingParams,
    RightsizingResult,
    WorkloadBucket,
    homogeneous_cost,
    max_rate_meeting_slo,
    rightsize,
)

__all__ = [
    "BudgetDecision",
    "BudgetGuard",
    "BudgetParams",
    "GpuOption",
    "InfeasibleWorkload",
    "MelangeRightsizer",
    "RateSearch",
    "RightsizingParams",
    "RightsizingResult",
    "WorkloadBucket",
    "homogeneous_cost",
    "max_rate_meeting_slo",
    "rightsize",
]
