"""Scorers counting what the router itself has in flight (at dispatch, never stale): requests, tokens."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.types import EndpointState, RouteRequest

_PENDING_CAP = 4096  # requests scored but not yet dispatched whose per-endpoint loads are kept


class ActiveRequestParams(PolicyParams):
    idle_threshold: Annotated[int, Field(ge=0)] = 0
    max_busy_score: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    request_timeout_s: Annotated[float, Field(gt=0.0)] | None = 120.0


class ActiveRequestScorer(Plugin):
    """Router-local in-flight count c, counted at dispatch so it is never stale: c <= idle: 1; else
    (max_c - c) / max_c * max_busy_score. Entries older than `request_timeout_s` are dropped (llm-d's TTL),
    so a lost completion cannot pin an endpoint forever. max_c is over the candidates."""

    TYPE = "active-request-scorer"
    Params = ActiveRequestParams
    __slots__ = ("_counts", "_open", "_order", "idle_threshold", "max_busy_score", "request_timeout_s")

    def __init__(
        self, idle_threshold: int = 0, max_busy_score: float = 1.0, request_timeout_s: float | None = 120.0
    ) -> None:
        super().__init__()
        self.idle_threshold = idle_threshold
        self.max_busy_score = max_busy_score
        self.request_timeout_s = request_timeout_s
        self._counts: dict[str, int] = {}
        self._open: dict[tuple[int, str], float] = {}
        self._order: deque[tuple[float, tuple[int, str]]] = deque()

    @classmethod
    def from_params(cls, params: ActiveRequestParams, rng: np.random.Generator) -> ActiveRequestScorer:
        return cls(params.idle_threshold, params.max_busy_score, params.request_timeout_s)

    def count(self, endpoint: str) -> int:
        return self._counts.get(endpoint, 0)

    def _expire(self, now: float) -> None:
        timeout = self.request_timeout_s
        order = self._order
        if timeout is None or not order:
            return
        while order and order[0][0] + timeout <= now:
            t, key = order.popleft()
            if self._open.get(key) == t:
                del self._open[key]
                self._decrement(key[1])

    def _decrement(self, endpoint: str) -> None:
        c = self._counts.get(endpoint, 0)
        if c <= 1:
            self._counts.pop(endpoint, None)
        else:
            self._counts[endpoint] = c - 1

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        self._expire(now)
        get = self._counts.get
        counts = [get(e.name, 0) for e in endpoints]
        max_c = max(counts)
        idle = self.idle_threshold
        scale = self.max_busy_score / max_c if max_c > 0 else 0.0
        return [1.0 if c <= idle else (max_c - c) * scale for c in counts]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        self._expire(now)
        key = (request.request_id, endpoint)
        if key in self._open:  # the same request sent twice to one endpoint counts once
            return
        self._open[key] = now
        if self.request_timeout_s is not None:  # without a TTL nothing would ever pop the queue
            self._order.append((now, key))
        self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        if self._open.pop((request.request_id, endpoint), None) is not None:
            self._decrement(endpoint)


class TokenLoadParams(PolicyParams):
    queue_threshold_tokens: Annotated[int, Field(gt=0)] = 4_194_304  # 128 requests of 32K tokens
    output_ratio: Annotated[float, Field(ge=0.0)] = 1.5


class TokenLoadScorer(Plugin):
    """T = in-flight tokens on the endpoint + this request's load there; 1 - min(T, threshold) / threshold.

    A request's load = its uncached prompt tokens on that endpoint (prompt minus prefix-index hits when the
    profile has a prefix-cache scorer, else the whole prompt) + estimated output = output_ratio x prompt.
    In-flight tokens are router-local: added at dispatch, removed at completion.
    """

    TYPE = "token-load-scorer"
    Params = TokenLoadParams
    __slots__ = ("_by_req", "_inflight", "_loads", "output_ratio", "prefix", "threshold")

    def __init__(self, queue_threshold_tokens: int = 4_194_304, output_ratio: float = 1.5) -> None:
        super().__init__()
        self.threshold = float(queue_threshold_tokens)
        self.output_ratio = output_ratio
        self.prefix: PrefixCacheScorer | None = None
        self._inflight: dict[str, float] = {}
        self._by_req: dict[tuple[int, str], float] = {}
        self._loads: dict[int, tuple[RouteRequest, dict[str, float]]] = {}

    @classmethod
    def from_params(cls, params: TokenLoadParams, rng: np.random.Generator) -> TokenLoadScorer:
        return cls(params.queue_threshold_tokens, params.output_ratio)

    def bind_prefix(self, prefix: PrefixCacheScorer) -> None:
        """Called by the profile: read uncached tokens from this prefix index."""
        self.prefix = prefix

    def inflight_tokens(self, endpoint: str) -> float:
        return self._inflight.get(endpoint, 0.0)

    def _uncached(self, request: RouteRequest, matched: int) -> float:
        return float(max(0, request.prompt_tokens - matched * request.block_tokens))

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        out_est = self.output_ratio * request.prompt_tokens
        if self.prefix is not None:
            matched = self.prefix.match_lengths(request, endpoints)
            loads = [self._uncached(request, m) + out_est for m in matched]
        else:
            loads = [request.prompt_tokens + out_est] * len(endpoints)
        if len(self._loads) >= _PENDING_CAP:
            del self._loads[next(iter(self._loads))]
        self._loads[request.request_id] = (
            request,
            {e.name: x for e, x in zip(endpoints, loads, strict=True)},
        )
        get = self._inflight.get
        t = self.threshold
        return [1.0 - min(get(e.name, 0.0) + x, t) / t for e, x in zip(endpoints, loads, strict=True)]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        entry = self._loads.pop(request.request_id, None)
        load = entry[1].get(endpoint) if entry is not None and entry[0] is request else None
        if load is None:
            matched = self.prefix.matched_blocks(request, endpoint) if self.prefix is not None else 0
            load = self._uncached(request, matched) + self.output_ratio * request.prompt_tokens
        key = (request.request_id, endpoint)
        if key in self._by_req:
            return
        self._by_req[key] = load
        self._inflight[endpoint] = self._inflight.get(endpoint, 0.0) + load

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        load = self._by_req.pop((request.request_id, endpoint), None)
        if load is not None:
            left = self._inflight.get(endpoint, 0.0) - load
            if left <= 1e-9:
                self._inflight.pop(endpoint, None)
            else:
                self._inflight[endpoint] = left
