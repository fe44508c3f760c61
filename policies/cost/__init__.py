"""Cost: a $/h budget guard and Mélange-style GPU right-sizing (an integer program via scipy.optimize.milp)."""

from policies.cost.budget import BudgetDecision, BudgetGuard, BudgetParams
from policies.cost.rightsizing import (
    GpuOption,
    InfeasibleWorkload,
    MelangeRightsizer,
    RightsizingParams,
    RightsizingResult,
    WorkloadBucket,
    homogeneous_cost,
    rightsize,
)

__all__ = [
    "BudgetDecision",
    "BudgetGuard",
    "BudgetParams",
    "GpuOption",
    "InfeasibleWorkload",
    "MelangeRightsizer",
    "RightsizingParams",
    "RightsizingResult",
    "WorkloadBucket",
    "homogeneous_cost",
    "rightsize",
]
