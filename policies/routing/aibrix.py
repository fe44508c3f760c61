"""AIBrix's prefix-cache router as a filter + picker pair (vllm-project/aibrix, pkg/plugins/gateway/algorithms).

AIBrix routes on its gateway's own count of requests in flight per pod (its "realtime running requests":
incremented when a request is routed, decremented when it finishes), so by default both plugins count in-flight
requests at dispatch like that; `load: running` uses the scraped vllm:num_requests_running instead.

- aibrix-imbalance-filter: when the load is imbalanced, keep only the least-loaded candidates.
- aibrix-prefix-cache-picker: the longest prefix match among candidates whose load <= mean + std_factor * std,
  fewer requests first on equal matches, remaining ties at random; no such match: the least loaded.

Together (profile `aibrix-prefix-cache`) they behave like AIBrix's current router, where the load gate restricts
prefix matching to the least-loaded pods; the classic router picked a random least-loaded pod outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.prefix_index import DEFAULT_LRU_CAPACITY
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.types import EndpointState, RouteRequest

Load = Literal["in-flight", "running"]


class InFlightCounter:
    """Requests dispatched and not yet completed, per endpoint (a request sent twice to one endpoint counts once)."""

    __slots__ = ("_counts", "_open")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._open: set[tuple[int, str]] = set()

    def count(self, endpoint: str) -> int:
        return self._counts.get(endpoint, 0)

    def dispatched(self, request_id: int, endpoint: str) -> None:
        key = (request_id, endpoint)
        if key not in self._open:
            self._open.add(key)
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def completed(self, request_id: int, endpoint: str) -> None:
        key = (request_id, endpoint)
        if key in self._open:
            self._open.remove(key)
            left = self._counts[endpoint] - 1
            if left:
                self._counts[endpoint] = left
            else:
                del self._counts[endpoint]


class _LoadAware(Plugin):
    """Reads each candidate's load: router-local in-flight count (default) or scraped running requests."""

    __slots__ = ("inflight", "load")

    def __init__(self, load: Load = "in-flight") -> None:
        super().__init__()
        self.load = load
        self.inflight = InFlightCounter()

    def loads(self, endpoints: Sequence[EndpointState]) -> list[int]:
        if self.load == "running":
            return [e.running for e in endpoints]
        count = self.inflight.count
        return [count(e.name) for e in endpoints]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        self.inflight.dispatched(request.request_id, endpoint)

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        self.inflight.completed(request.request_id, endpoint)


class ImbalanceParams(PolicyParams):
    imbalance_abs_count: Annotated[int, Field(ge=0)] = 8
    imbalance_factor: Annotated[float, Field(gt=0.0)] | None = None
    load: Load = "in-flight"


class AibrixImbalanceFilter(_LoadAware):
    """Imbalanced when max - min load > imbalance_abs_count (8, AIBrix's classic rule); then keep only the
    candidates with the minimum load, else keep all.

    With `imbalance_factor` set (AIBrix's newer rule, factor 2.0), imbalanced when max > factor * (mean + 1)
    and max - min >= imbalance_abs_count.
    """

    TYPE = "aibrix-imbalance-filter"
    Params = ImbalanceParams
    __slots__ = ("abs_count", "factor")

    def __init__(
        self, imbalance_abs_count: int = 8, imbalance_factor: float | None = None, load: Load = "in-flight"
    ) -> None:
        super().__init__(load)
        self.abs_count = imbalance_abs_count
        self.factor = imbalance_factor

    @classmethod
    def from_params(cls, params: ImbalanceParams, rng: np.random.Generator) -> AibrixImbalanceFilter:
        return cls(params.imbalance_abs_count, params.imbalance_factor, params.load)

    def imbalanced(self, loads: Sequence[int]) -> bool:
        lo, hi = min(loads), max(loads)
        if self.factor is None:
            return hi - lo > self.abs_count
        mean = sum(loads) / len(loads)
        return hi > self.factor * (mean + 1.0) and hi - lo >= self.abs_count

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        if len(endpoints) <= 1:
            return endpoints
        loads = self.loads(endpoints)
        if not self.imbalanced(loads):
            return endpoints
        lo = min(loads)
        return [e for e, x in zip(endpoints, loads, strict=True) if x == lo]


class AibrixPrefixCacheParams(PolicyParams):
    std_factor: Annotated[float, Field(ge=0.0)] = 1.0
    load: Load = "in-flight"
    lru_capacity_per_endpoint: Annotated[int, Field(ge=1)] = DEFAULT_LRU_CAPACITY
    max_prefix_blocks_to_match: Annotated[int, Field(ge=1)] = 256


class AibrixPrefixCachePicker(_LoadAware):
    """Among candidates with a prefix match and load <= mean + std_factor * std (sample std over the
    candidates' loads, 0 for one candidate): the most matched blocks, then the least load, then uniformly at
    random. No such candidate: uniformly among the least loaded. Ignores the scorers' totals.

    Uses the profile's prefix-cache scorer's index when there is one (bound by the profile); otherwise keeps its
    own (AIBrix's router owns its prefix table), updated when a request is dispatched.
    """

    TYPE = "aibrix-prefix-cache-picker"
    Params = AibrixPrefixCacheParams
    __slots__ = ("_own", "prefix", "rng", "std_factor")

    def __init__(
        self,
        rng: np.random.Generator,
        std_factor: float = 1.0,
        load: Load = "in-flight",
        lru_capacity_per_endpoint: int = DEFAULT_LRU_CAPACITY,
        max_prefix_blocks_to_match: int = 256,
    ) -> None:
        super().__init__(load)
        self.rng = rng
        self.std_factor = std_factor
        self._own: PrefixCacheScorer | None = PrefixCacheScorer(lru_capacity_per_endpoint, max_prefix_blocks_to_match)
        self.prefix: PrefixCacheScorer = self._own

    @classmethod
    def from_params(cls, params: AibrixPrefixCacheParams, rng: np.random.Generator) -> AibrixPrefixCachePicker:
        return cls(
            rng, params.std_factor, params.load, params.lru_capacity_per_endpoint, params.max_prefix_blocks_to_match
        )

    def bind_prefix(self, prefix: PrefixCacheScorer) -> None:
        """Called by the profile: share its prefix index instead of keeping one of our own."""
        self.prefix = prefix
        self._own = None

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        loads = self.loads(endpoints)
        n = len(loads)
        mean = sum(loads) / n
        std = (sum((x - mean) ** 2 for x in loads) / (n - 1)) ** 0.5 if n > 1 else 0.0
        limit = mean + self.std_factor * std + 1e-9
        matched = self.prefix.match_lengths(request, endpoints)
        best: tuple[int, int] | None = None  # (matched blocks, -load)
        ties: list[int] = []
        for i in range(n):
            m, x = matched[i], loads[i]
            if m <= 0 or x > limit:
                continue
            key = (m, -x)
            if best is None or key > best:
                best, ties = key, [i]
            elif key == best:
                ties.append(i)
        if not ties:
            lo = min(loads)
            ties = [i for i in range(n) if loads[i] == lo]
        if len(ties) == 1:
            return ties[0]
        return ties[int(self.rng.integers(len(ties)))]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        super().on_dispatch(now, request, endpoint)
        if self._own is not None:
            self._own.on_dispatch(now, request, endpoint)
