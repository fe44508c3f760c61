"""A spend cap on the fleet: `BudgetGuard(max_usd_per_hour)` allows a scale-up only while the hourly cost stays
within the budget; refused scale-ups leave requests queued (the caller's choice, named in the reason).

Scale-downs (added <= 0) are always allowed. A budget of exactly the new total is allowed (<=, with a 1e-9 $/h
tolerance for float sums).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams

_TOL = 1e-9


def _usd(x: float) -> str:
    return f"-${-x:.2f}" if x < 0 else f"${x:.2f}"


def _budget(x: float) -> str:
    """$40 for a whole-dollar budget (how a budget is usually written), $40.50 otherwise."""
    return f"${x:.0f}" if float(x).is_integer() else f"${x:.2f}"


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


class BudgetParams(PolicyParams):
    """`budget` / `max-usd-per-hour`: the cap in USD per hour (no default: a budget must be stated)."""

    max_usd_per_hour: Annotated[float, Field(ge=0.0)]
    on_refusal: str = "requests queue"


class BudgetGuard:
    __slots__ = ("max_usd_per_hour", "on_refusal")

    def __init__(self, max_usd_per_hour: float, on_refusal: str = "requests queue") -> None:
        p = BudgetParams(max_usd_per_hour=max_usd_per_hour, on_refusal=on_refusal)
        self.max_usd_per_hour = p.max_usd_per_hour
        self.on_refusal = p.on_refusal

    @classmethod
    def from_params(cls, params: BudgetParams, rng: np.random.Generator) -> BudgetGuard:
        return cls(params.max_usd_per_hour, params.on_refusal)

    def headroom(self, current_usd_per_hour: float) -> float:
        """USD per hour still available (negative when already over budget)."""
        return self.max_usd_per_hour - current_usd_per_hour

    def allows(
        self,
        current_usd_per_hour: float,
        added_usd_per_hour: float,
        model: str = "",
        replicas: int = 1,
    ) -> BudgetDecision:
        """May the fleet go from `current` to `current + added` $/h? `model`/`replicas` only word the reason."""
        if current_usd_per_hour < 0:
            raise ValueError("current_usd_per_hour must be >= 0")
        noun = "replica" if replicas == 1 else "replicas"
        what = f"scale-up of {model} by {replicas} {noun}" if model else f"scale-up by {replicas} {noun}"
        budget = f"the {_budget(self.max_usd_per_hour)}/h budget"
        in_use = f"{_usd(current_usd_per_hour)}/h in use"
        if added_usd_per_hour <= 0:
            return BudgetDecision(True, f"scale-down ({_usd(added_usd_per_hour)}/h) is always allowed")
        after = current_usd_per_hour + added_usd_per_hour
        if after <= self.max_usd_per_hour + _TOL:
            return BudgetDecision(
                True, f"{what} (+{_usd(added_usd_per_hour)}/h) fits {budget} ({in_use}, {_usd(after)}/h after)"
            )
        return BudgetDecision(
            False, f"{what} (+{_usd(added_usd_per_hour)}/h) would exceed {budget} ({in_use}): {self.on_refusal}"
        )

    def max_replicas(self, current_usd_per_hour: float, usd_per_hour_per_replica: float) -> int:
        """How many more replicas of that price fit in the budget (0 when none does)."""
        if usd_per_hour_per_replica <= 0:
            raise ValueError("usd_per_hour_per_replica must be > 0")
        return max(0, int((self.headroom(current_usd_per_hour) + _TOL) // usd_per_hour_per_replica))
