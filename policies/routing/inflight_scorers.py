"""Scorers counting what the router itself has in flight (at dispatch, never stale): requests, tokens.

llm-d (520af478) keeps both counts in one data producer, requestcontrol/dataproducer/inflightload/producer.go: a
request is added to its target endpoint at PreRequest and released at end of stream (or abort); there is no
timeout. Here each scorer keeps its own count from the engine's `on_dispatch` / `on_complete` (every outcome,
success or failure, completes a request), which is the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.types import EndpointState, RouteRequest

DEFAULT_TOKEN_QUEUE_THRESHOLD = 4_194_304
"""llm-d's tokenQueueThresholdDefault: 128 requests of 32K tokens (scorer/tokenload/token_load.go)."""


class _InFlight:
    """Per-endpoint sums of what each open (request, endpoint) pair added; a pair counts once."""

    __slots__ = ("_by_key", "_sums")

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._by_key: dict[tuple[int, str], float] = {}

    def get(self, endpoint: str) -> float:
        return self._sums.get(endpoint, 0.0)

    def add(self, request_id: int, endpoint: str, amount: float) -> None:
        key = (request_id, endpoint)
        if key in self._by_key:  # the same request sent twice to one endpoint counts once
            return
        self._by_key[key] = amount
        self._sums[endpoint] = self._sums.get(endpoint, 0.0) + amount

    def release(self, request_id: int, endpoint: str) -> None:
        amount = self._by_key.pop((request_id, endpoint), None)
        if amount is None:  # never dispatched, or already released
            return
        left = self._sums.get(endpoint, 0.0) - amount
        if left <= 1e-9:
            self._sums.pop(endpoint, None)
        else:
            self._sums[endpoint] = left

    def __len__(self) -> int:
        return len(self._by_key)


class ActiveRequestParams(PolicyParams):
    idle_threshold: Annotated[int, Field(ge=0)] = 0
    max_busy_score: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0


class ActiveRequestScorer(Plugin):
    """Router-local in-flight count c (scorer/activerequest/active_request.go): c <= idle_threshold: 1; else
    (max_c - c) / max_c * max_busy_score, max_c over the candidates. Counts are released at completion only:
    llm-d ignores the deprecated `requestTimeout`, and so does odhsim (an EndpointPickerConfig may still set it)."""

    TYPE = "active-request-scorer"
    Params = ActiveRequestParams
    __slots__ = ("_open", "idle_threshold", "max_busy_score")

    def __init__(self, idle_threshold: int = 0, max_busy_score: float = 1.0) -> None:
        super().__init__()
        self.idle_threshold = idle_threshold
        self.max_busy_score = max_busy_score
        self._open = _InFlight()

    @classmethod
    def from_params(cls, params: ActiveRequestParams, rng: np.random.Generator) -> ActiveRequestScorer:
        return cls(params.idle_threshold, params.max_busy_score)

    def count(self, endpoint: str) -> int:
        return round(self._open.get(endpoint))

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        counts = [self.count(e.name) for e in endpoints]
        max_c = max(counts)
        idle = self.idle_threshold
        scale = self.max_busy_score / max_c if max_c > 0 else 0.0
        return [1.0 if c <= idle else (max_c - c) * scale for c in counts]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        self._open.add(request.request_id, endpoint, 1.0)

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        self._open.release(request.request_id, endpoint)


class TokenLoadParams(PolicyParams):
    queue_threshold_tokens: Annotated[int, Field(gt=0)] = DEFAULT_TOKEN_QUEUE_THRESHOLD
    output_ratio: Annotated[float, Field(ge=0.0)] = 1.5


def estimate_tokens(prompt_tokens: int, output_ratio: float = 1.5) -> int:
    """llm-d's SimpleTokenEstimator: input + round(input x 1.5), input at least 1; Go's math.Round rounds halves
    away from zero (3 x 1.5 = 4.5 -> 5), Python's round() would not. odhsim knows the prompt's token count, where
    llm-d estimates it from the body (bytes / 4 or characters / 4)."""
    n = max(int(prompt_tokens), 1)
    return n + math.floor(n * output_ratio + 0.5)


class TokenLoadScorer(Plugin):
    """T = the endpoint's in-flight tokens (scorer/tokenload/token_load.go); T <= 0: 1, else
    1 - min(T, threshold) / threshold. Each in-flight request counts `estimate_tokens(prompt)`, added at dispatch
    and released at completion; the request being scored is not counted, and prefix-cache hits are not subtracted.
    """

    TYPE = "token-load-scorer"
    Params = TokenLoadParams
    __slots__ = ("_inflight", "output_ratio", "threshold")

    def __init__(self, queue_threshold_tokens: int = DEFAULT_TOKEN_QUEUE_THRESHOLD, output_ratio: float = 1.5) -> None:
        super().__init__()
        self.threshold = float(queue_threshold_tokens)
        self.output_ratio = output_ratio
        self._inflight = _InFlight()

    @classmethod
    def from_params(cls, params: TokenLoadParams, rng: np.random.Generator) -> TokenLoadScorer:
        return cls(params.queue_threshold_tokens, params.output_ratio)

    def inflight_tokens(self, endpoint: str) -> float:
        return self._inflight.get(endpoint)

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        t = self.threshold
        out = []
        for e in endpoints:
            load = self._inflight.get(e.name)
            out.append(1.0 if load <= 0 else 1.0 - min(load, t) / t)
        return out

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        tokens = estimate_tokens(request.prompt_tokens, self.output_ratio)
        self._inflight.add(request.request_id, endpoint, float(tokens))

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        self._inflight.release(request.request_id, endpoint)
