"""Pickers: choose one candidate from the weighted totals (llm-d's three, plus the classic baselines).

All randomness comes from the Generator injected at construction, so a pick is a function of (seed, history).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import NoParams, PolicyParams
from policies.routing._base import Plugin
from policies.routing.types import EndpointState, RouteRequest

TIE_EPS = 1e-9  # totals this close count as equal: sums of weighted floats differ in the last bits


class MaxScorePicker(Plugin):
    """Highest total; ties broken uniformly at random (llm-d shuffles, then takes the max).

    Randomness is drawn only when there is a tie, so a run without ties consumes none: still deterministic
    given the seed either way.
    """

    TYPE = "max-score-picker"
    Params = NoParams
    __slots__ = ("rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> MaxScorePicker:
        return cls(rng)

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        floor = max(totals) - TIE_EPS
        ties = []  # (a loop over indices: cheaper than a comprehension over enumerate() for a handful of totals)
        for i in range(len(totals)):
            if totals[i] >= floor:
                ties.append(i)
        if len(ties) == 1:
            return ties[0]
        return ties[int(self.rng.integers(len(ties)))]


class RandomPicker(Plugin):
    """Uniform over the candidates, ignoring the scores."""

    TYPE = "random-picker"
    Params = NoParams
    __slots__ = ("rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> RandomPicker:
        return cls(rng)

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        return int(self.rng.integers(len(endpoints)))


class WeightedRandomPicker(Plugin):
    """A-Res (Efraimidis-Spirakis): key = u^(1/score), highest key wins, so P(pick) grows with the score.

    A zero score never wins while any score is positive; all zero: uniform.
    """

    TYPE = "weighted-random-picker"
    Params = NoParams
    __slots__ = ("rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> WeightedRandomPicker:
        return cls(rng)

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        n = len(totals)
        u = self.rng.random(n).tolist()
        best = -1.0
        index = -1
        for i in range(n):
            s = totals[i]
            if s > 0.0:
                key = u[i] ** (1.0 / s)
                if key > best:
                    best = key
                    index = i
        if index < 0:
            return int(self.rng.integers(n))
        return index


class RoundRobinPicker(Plugin):
    """Cycles through the candidates in name order: the next name after the last one picked, wrapping around.

    Keyed by name rather than position, so endpoints joining or leaving do not reset or skew the rotation.
    """

    TYPE = "round-robin-picker"
    Params = NoParams
    __slots__ = ("last",)

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> RoundRobinPicker:
        return cls()

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        last = self.last
        after = -1  # smallest name > last
        first = 0  # smallest name overall
        for i, e in enumerate(endpoints):
            name = e.name
            if name < endpoints[first].name:
                first = i
            if last is not None and name > last and (after < 0 or name < endpoints[after].name):
                after = i
        index = after if after >= 0 else first
        self.last = endpoints[index].name
        return index


class PowerOfTwoPicker(Plugin):
    """Power of two choices (Ray Serve's default): sample two distinct candidates, take the one with fewer
    waiting + running requests (the first sampled on a tie). One random draw per pick."""

    TYPE = "power-of-two-picker"
    Params = NoParams
    __slots__ = ("rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> PowerOfTwoPicker:
        return cls(rng)

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        n = len(endpoints)
        if n == 1:
            return 0
        k = int(self.rng.integers(n * (n - 1)))  # an ordered pair of distinct indices
        i, j = divmod(k, n - 1)
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return j if b.waiting + b.running < a.waiting + a.running else i


class LeastLatencyParams(PolicyParams):
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    failure_penalty_s: Annotated[float, Field(ge=0.0)] | None = None


class LeastLatencyPicker(Plugin):
    """Lowest EWMA of the latencies observed per endpoint (end to end, as reported to `on_complete`).

    ewma <- latency on the first observation, then ewma <- alpha * latency + (1 - alpha) * ewma. alpha = 0.3
    weighs the last ~5 completions (an EWMA's span is 2 / alpha - 1), so a replica that slows down is
    abandoned within a few completions while a single outlier moves the estimate by only 30 %.

    Candidates never observed go first (exploration, uniform among them), so a new or scaled-up endpoint gets
    traffic and an estimate; otherwise the lowest EWMA wins, ties uniformly at random. A failed request updates
    nothing unless `failure_penalty_s` is set, in which case it counts as that latency (fast failures would
    otherwise make a broken endpoint look fastest).
    """

    TYPE = "least-latency-picker"
    Params = LeastLatencyParams
    __slots__ = ("alpha", "ewma", "failure_penalty_s", "rng")

    def __init__(self, rng: np.random.Generator, alpha: float = 0.3, failure_penalty_s: float | None = None) -> None:
        super().__init__()
        self.rng = rng
        self.alpha = alpha
        self.failure_penalty_s = failure_penalty_s
        self.ewma: dict[str, float] = {}

    @classmethod
    def from_params(cls, params: LeastLatencyParams, rng: np.random.Generator) -> LeastLatencyPicker:
        return cls(rng, params.alpha, params.failure_penalty_s)

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        ewma = self.ewma
        ties = [i for i, e in enumerate(endpoints) if e.name not in ewma]
        if not ties:
            values = [ewma[e.name] for e in endpoints]
            floor = min(values) + TIE_EPS
            ties = [i for i, v in enumerate(values) if v <= floor]
        if len(ties) == 1:
            return ties[0]
        return ties[int(self.rng.integers(len(ties)))]

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        x = latency_s if ok else self.failure_penalty_s
        if x is None or not x >= 0.0:  # no penalty configured, or a NaN / negative latency
            return
        old = self.ewma.get(endpoint)
        self.ewma[endpoint] = x if old is None else self.alpha * x + (1.0 - self.alpha) * old


PICKERS: tuple[type[Plugin], ...] = (
    MaxScorePicker,
    RandomPicker,
    WeightedRandomPicker,
    RoundRobinPicker,
    PowerOfTwoPicker,
    LeastLatencyPicker,
)
