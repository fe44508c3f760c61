"""Registers the cost policies; `policies.builtin` may call `register` (never an import side effect).

kind         name              builds
budget       max-usd-per-hour  BudgetGuard        (params: max_usd_per_hour, required)
rightsizing  melange           MelangeRightsizer  (Mélange MILP; `.solve(options, buckets, throughput, baseline)`)

Both fit the registry's shape (a pydantic params model and `factory(params, rng)`; neither uses the rng).
"""

from __future__ import annotations

from policies.cost.budget import BudgetGuard, BudgetParams
from policies.cost.rightsizing import MelangeRightsizer, RightsizingParams
from policies.registry import Registry

BUDGET_KIND = "budget"
RIGHTSIZING_KIND = "rightsizing"
KINDS = (BUDGET_KIND, RIGHTSIZING_KIND)


def register(reg: Registry) -> None:
    reg.register(BUDGET_KIND, "max-usd-per-hour", BudgetGuard.from_params, BudgetParams)
    reg.register(RIGHTSIZING_KIND, "melange", MelangeRightsizer.from_params, RightsizingParams)
