"""Filters: each keeps a subset of the candidates; an empty result ends the pick with no endpoint."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.types import EndpointState, RouteRequest


class LowQueueParams(PolicyParams):
    threshold: Annotated[int, Field(ge=0)] = 128


class LowQueueFilter(Plugin):
    """Keep endpoints whose waiting queue is <= threshold (GIE's low-queue filter, default 128)."""

    TYPE = "low-queue-filter"
    Params = LowQueueParams
    __slots__ = ("threshold",)

    def __init__(self, threshold: int = 128) -> None:
        super().__init__()
        self.threshold = threshold

    @classmethod
    def from_params(cls, params: LowQueueParams, rng: np.random.Generator) -> LowQueueFilter:
        return cls(params.threshold)

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        t = self.threshold
        return [e for e in endpoints if e.waiting <= t]


class FreshMetricsParams(PolicyParams):
    max_age_s: Annotated[float, Field(gt=0.0)] = 2.0


class FreshMetricsFilter(Plugin):
    """Keep endpoints whose metrics are at most `max_age_s` old (llm-d: a scrape older than 2 s is stale)."""

    TYPE = "fresh-metrics-filter"
    Params = FreshMetricsParams
    __slots__ = ("max_age_s",)

    def __init__(self, max_age_s: float = 2.0) -> None:
        super().__init__()
        self.max_age_s = max_age_s

    @classmethod
    def from_params(cls, params: FreshMetricsParams, rng: np.random.Generator) -> FreshMetricsFilter:
        return cls(params.max_age_s)

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        oldest = now - self.max_age_s
        return [e for e in endpoints if e.scraped_at >= oldest]


class SaturationParams(PolicyParams):
    queue_depth_threshold: Annotated[int, Field(gt=0)] = 5
    kv_cache_util_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    headroom: Annotated[float, Field(ge=0.0)] = 0.0
    metrics_staleness_s: Annotated[float, Field(gt=0.0)] | None = 0.2


class SaturationFilter(Plugin):
    """llm-d's saturation-detector filter (the Filter role of its `utilization-detector`): keep endpoints with
    fresh metrics and waiting < queue_depth_threshold * (1 + headroom) and kv_usage < kv_cache_util_threshold *
    (1 + headroom); when none is left, keep them all (fail open, so the scorers pick the least bad one).

    Defaults as llm-d's: 5 waiting, 80 % KV, no headroom, metrics older than 200 ms count as stale
    (`metrics_staleness_s: null` turns the staleness check off).
    """

    TYPE = "saturation-filter"
    Params = SaturationParams
    __slots__ = ("kv_limit", "max_age_s", "queue_limit")

    def __init__(
        self,
        queue_depth_threshold: int = 5,
        kv_cache_util_threshold: float = 0.8,
        headroom: float = 0.0,
        metrics_staleness_s: float | None = 0.2,
    ) -> None:
        super().__init__()
        self.queue_limit = queue_depth_threshold * (1.0 + headroom)
        self.kv_limit = kv_cache_util_threshold * (1.0 + headroom)
        self.max_age_s = metrics_staleness_s

    @classmethod
    def from_params(cls, params: SaturationParams, rng: np.random.Generator) -> SaturationFilter:
        return cls(
            params.queue_depth_threshold, params.kv_cache_util_threshold, params.headroom, params.metrics_staleness_s
        )

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        q, kv = self.queue_limit, self.kv_limit
        oldest = float("-inf") if self.max_age_s is None else now - self.max_age_s
        kept = [e for e in endpoints if e.scraped_at >= oldest and e.waiting < q and e.kv_usage < kv]
        return kept or endpoints


FILTERS: tuple[type[Plugin], ...] = (LowQueueFilter, FreshMetricsFilter, SaturationFilter)
