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


FILTERS: tuple[type[Plugin], ...] = (LowQueueFilter, FreshMetricsFilter)
