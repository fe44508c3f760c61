"""Saturation detectors (llm-d-router plugins/flowcontrol/saturationdetector/): how full the pool is, >= 0.

1.0 means "at the configured limit"; values above 1 are possible. The flow controller stops dispatching while
saturation >= 1.0 and the legacy admitter sheds sheddable requests then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import AliasChoices, Field

from policies.registry import PolicyParams
from policies.routing.types import EndpointState


class InFlight:
    """Router-local in-flight requests per endpoint (llm-d's inflight-load-producer, requests mode): counted at
    dispatch, released at completion, so never stale. A request is counted once: dispatching an id again moves it
    to the new endpoint; completing an unknown id is ignored."""

    __slots__ = ("by_endpoint", "by_request")

    def __init__(self) -> None:
        self.by_endpoint: dict[str, int] = {}
        self.by_request: dict[int, str] = {}

    def dispatch(self, request_id: int, endpoint: str) -> None:
        previous = self.by_request.get(request_id)
        if previous is not None:
            self._release(previous)
        self.by_request[request_id] = endpoint
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1

    def complete(self, request_id: int) -> None:
        where = self.by_request.pop(request_id, None)
        if where is not None:
            self._release(where)

    def _release(self, endpoint: str) -> None:
        n = self.by_endpoint[endpoint] - 1
        if n:
            self.by_endpoint[endpoint] = n
        else:
            del self.by_endpoint[endpoint]


class UtilizationParams(PolicyParams):
    """llm-d's defaults: queueDepthThreshold 5, kvCacheUtilThreshold 0.8, metricsStalenessThreshold 200 ms."""

    queue_depth_threshold: Annotated[
        int, Field(gt=0, validation_alias=AliasChoices("queue_depth_threshold", "queueDepthThreshold"))
    ] = 5
    kv_cache_threshold: Annotated[
        float,
        Field(gt=0.0, le=1.0, validation_alias=AliasChoices("kv_cache_threshold", "kvCacheUtilThreshold")),
    ] = 0.8
    staleness_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.2
    scrape_lag_compensation: bool = False


class UtilizationDetector:
    """sat = mean over endpoints of max(waiting / queue_depth_threshold, kv_usage / kv_cache_threshold).

    An endpoint whose metrics are older than `staleness_s` (now - scraped_at > staleness_s), or that is marked
    unhealthy (its metrics are as good as missing), scores 1.0; an empty pool is 1.0 (llm-d: nothing to dispatch to).

    scrape_lag_compensation is odhsim's own option, in no llm-d version (llm-d's detector reads scraped metrics
    only; off by default): the scraped queue lags the dispatch loop, so the queue term adds the requests
    dispatched since the scrape, credit = max(0, in_flight - (waiting + running)), with in_flight counted by
    on_dispatch / on_complete.
    """

    TYPE = "utilization"
    Params = UtilizationParams
    __slots__ = ("_in_flight", "kv_cache_threshold", "queue_depth_threshold", "staleness_s")

    def __init__(
        self,
        queue_depth_threshold: int = 5,
        kv_cache_threshold: float = 0.8,
        staleness_s: float = 0.2,
        scrape_lag_compensation: bool = False,
    ) -> None:
        p = UtilizationParams(
            queue_depth_threshold=queue_depth_threshold, kv_cache_threshold=kv_cache_threshold, staleness_s=staleness_s
        )
        self.queue_depth_threshold = p.queue_depth_threshold
        self.kv_cache_threshold = p.kv_cache_threshold
        self.staleness_s = p.staleness_s
        self._in_flight = InFlight() if scrape_lag_compensation else None

    @classmethod
    def from_params(cls, params: UtilizationParams, rng: np.random.Generator) -> UtilizationDetector:
        return cls(
            params.queue_depth_threshold, params.kv_cache_threshold, params.staleness_s, params.scrape_lag_compensation
        )

    def saturation(self, now: float, endpoints: Sequence[EndpointState]) -> float:
        n = len(endpoints)
        if n == 0:
            return 1.0
        stale = self.staleness_s
        q = 1.0 / self.queue_depth_threshold
        kv = 1.0 / self.kv_cache_threshold
        in_flight = self._in_flight.by_endpoint if self._in_flight is not None else None
        total = 0.0
        for e in endpoints:
            if now - e.scraped_at > stale or not e.healthy:
                total += 1.0
                continue
            waiting = e.waiting
            if in_flight is not None:
                credit = in_flight.get(e.name, 0) - waiting - e.running
                if credit > 0:
                    waiting += credit
            a = waiting * q
            b = e.kv_usage * kv
            total += a if a > b else b
        return total / n

    def on_dispatch(self, now: float, request_id: int, endpoint: str) -> None:
        """Counted only with scrape_lag_compensation (otherwise this detector reads scraped metrics only)."""
        if self._in_flight is not None:
            self._in_flight.dispatch(request_id, endpoint)

    def on_complete(self, now: float, request_id: int, endpoint: str) -> None:
        if self._in_flight is not None:
            self._in_flight.complete(request_id)


class ConcurrencyParams(PolicyParams):
    """llm-d's concurrency-detector default maxConcurrency 100 (requests mode)."""

    max_concurrency: Annotated[int, Field(gt=0, validation_alias=AliasChoices("max_concurrency", "maxConcurrency"))] = (
        100
    )


class ConcurrencyDetector:
    """sat = in-flight requests on the given endpoints / (number of endpoints * max_concurrency); empty pool 1.0.

    Counts are router-local (see InFlight), so they are never stale.
    """

    TYPE = "concurrency"
    Params = ConcurrencyParams
    __slots__ = ("_in_flight", "max_concurrency")

    def __init__(self, max_concurrency: int = 100) -> None:
        self.max_concurrency = ConcurrencyParams(max_concurrency=max_concurrency).max_concurrency
        self._in_flight = InFlight()

    @classmethod
    def from_params(cls, params: ConcurrencyParams, rng: np.random.Generator) -> ConcurrencyDetector:
        return cls(params.max_concurrency)

    def saturation(self, now: float, endpoints: Sequence[EndpointState]) -> float:
        n = len(endpoints)
        if n == 0:
            return 1.0
        counts = self._in_flight.by_endpoint
        total = 0
        for e in endpoints:
            total += counts.get(e.name, 0)
        return total / (n * self.max_concurrency)

    def in_flight(self, endpoint: str) -> int:
        return self._in_flight.by_endpoint.get(endpoint, 0)

    def on_dispatch(self, now: float, request_id: int, endpoint: str) -> None:
        self._in_flight.dispatch(request_id, endpoint)

    def on_complete(self, now: float, request_id: int, endpoint: str) -> None:
        self._in_flight.complete(request_id)
