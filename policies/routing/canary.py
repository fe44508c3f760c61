"""Which revision of a model a request goes to while a canary rollout splits its traffic (kind "traffic-split").

KServe's `canaryTrafficPercent` gives the latest ready revision that share of an InferenceService's requests and
the previous rolled-out revision the rest. In serverless mode Knative programs the split into the ingress as
weighted routes (Istio VirtualService weights / Envoy weighted clusters), which pick a route per request at random
in proportion to the weights.

Policies (`pick(now, percent) -> LATEST | PREVIOUS`; `percent` is the latest revision's share, 0-100):
- `weighted-random` (default): Envoy's weighted clusters. One uniform draw u per request from the injected
  generator; LATEST when 100 * u < percent. Exactly one draw per decision, whatever the percent, so two runs that
  differ only in the percent see the same draws: the requests sent to a 10% canary are a subset of those sent to
  a 20% one (common random numbers).
- `smooth-weighted`: deterministic, nginx's smooth weighted round-robin reduced to two targets. A credit grows by
  `percent` per request; when it reaches 100 the request goes to LATEST and the credit drops by 100. Exactly
  round(n * percent / 100) of n requests (to within one) go to the canary, evenly spaced; no randomness.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from policies.registry import NoParams, Registry

PREVIOUS = 0
"""The previous rolled-out revision (the model's own version)."""
LATEST = 1
"""The latest revision (the canary)."""
TRAFFIC_SPLIT_KIND = "traffic-split"


def _check(percent: float) -> None:
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be within 0..100, got {percent}")


class WeightedRandomSplit:
    """Istio/Envoy weighted routes: LATEST with probability percent / 100, one uniform draw per request."""

    TYPE: ClassVar[str] = "weighted-random"
    Params: ClassVar[type[NoParams]] = NoParams
    __slots__ = ("_rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> WeightedRandomSplit:
        return cls(rng)

    def pick(self, now: float, percent: float) -> int:
        _check(percent)
        return LATEST if 100.0 * float(self._rng.random()) < percent else PREVIOUS


class SmoothWeightedSplit:
    """Deterministic shares: a credit of `percent` per request; each full 100 sends one request to LATEST."""

    TYPE: ClassVar[str] = "smooth-weighted"
    Params: ClassVar[type[NoParams]] = NoParams
    __slots__ = ("_credit",)

    def __init__(self) -> None:
        self._credit = 0.0

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> SmoothWeightedSplit:
        return cls()

    def pick(self, now: float, percent: float) -> int:
        _check(percent)
        self._credit += percent
        if self._credit >= 100.0 - 1e-9:
            self._credit -= 100.0
            return LATEST
        return PREVIOUS


SPLITS = (WeightedRandomSplit, SmoothWeightedSplit)
DEFAULT_SPLIT = WeightedRandomSplit.TYPE


def register(reg: Registry) -> None:
    for cls in SPLITS:
        reg.register(TRAFFIC_SPLIT_KIND, cls.TYPE, cls.from_params, cls.Params)
