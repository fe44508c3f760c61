"""llm-d's scorers (POLICY_REFERENCE.md section 1): one score per candidate, meant to lie in [0,1].

Weights are not here: they live in the configuration and the framework applies them after clamping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.registry import NoParams, PolicyParams
from policies.routing._base import Plugin
from policies.routing.inflight_scorers import ActiveRequestScorer, TokenLoadScorer
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.types import NO_SESSION, EndpointState, RouteRequest


def _min_max_low_is_best(values: Sequence[float]) -> list[float]:
    """(max - v) / (max - min) over the candidates; all equal: 1 for everyone.

    Hot (per request): plain loops, which for a handful of candidates cost less than max(), min() and a
    comprehension (the same values: max and min keep the first of equal values, as these comparisons do)."""
    hi = lo = values[0]
    for v in values:
        if v > hi:
            hi = v
        elif v < lo:
            lo = v
    if hi == lo:
        return [1.0] * len(values)
    span = float(hi - lo)
    out = []
    for v in values:
        out.append((hi - v) / span)
    return out


class QueueScorer(Plugin):
    """Min-max over waiting requests (vllm:num_requests_waiting): shortest queue scores 1, longest 0."""

    TYPE = "queue-scorer"
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> QueueScorer:
        return cls()

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        waiting = []  # (a loop: cheaper than a comprehension for a handful of endpoints)
        for e in endpoints:
            waiting.append(e.waiting)
        return _min_max_low_is_best(waiting)


class RunningRequestsScorer(Plugin):
    """The same min-max over running requests (vllm:num_requests_running). Named as llm-d names it
    (scorer/runningrequests: running-requests-size-scorer); odhsim's earlier name stays as an alias."""

    TYPE = "running-requests-size-scorer"
    ALIASES = ("running-requests-scorer",)
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> RunningRequestsScorer:
        return cls()

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        return _min_max_low_is_best([e.running for e in endpoints])


class KvCacheUtilizationScorer(Plugin):
    """1 - kv_usage: prefer the endpoint with the most free KV cache."""

    TYPE = "kv-cache-utilization-scorer"
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> KvCacheUtilizationScorer:
        return cls()

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        free = []  # (a loop: cheaper than a comprehension for a handful of endpoints)
        for e in endpoints:
            free.append(1.0 - e.kv_usage)
        return free


LOAD_AWARE_THRESHOLD_DEFAULT = 128
"""llm-d's QueueThresholdDefault (scorer/loadaware/load_aware.go); a threshold <= 0 falls back to it."""


class LoadAwareParams(PolicyParams):
    threshold: int = LOAD_AWARE_THRESHOLD_DEFAULT


class LoadAwareScorer(Plugin):
    """q = 0: 0.5; else 0.5 * (1 - min(q, threshold) / threshold); an empty queue is 'half good' in llm-d.
    A threshold <= 0 is replaced by 128, as llm-d's NewLoadAware does."""

    TYPE = "load-aware-scorer"
    Params = LoadAwareParams
    __slots__ = ("threshold",)

    def __init__(self, threshold: int = LOAD_AWARE_THRESHOLD_DEFAULT) -> None:
        super().__init__()
        self.threshold = float(threshold if threshold > 0 else LOAD_AWARE_THRESHOLD_DEFAULT)

    @classmethod
    def from_params(cls, params: LoadAwareParams, rng: np.random.Generator) -> LoadAwareScorer:
        return cls(params.threshold)

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        t = self.threshold
        return [0.5 if e.waiting <= 0 else 0.5 * (1.0 - min(e.waiting, t) / t) for e in endpoints]


class SessionAffinityScorer(Plugin):
    """1 for the endpoint named by the request's session token, else 0 (scorer/sessionaffinity).

    llm-d sets the `x-session-token` response header (the serving endpoint, base64) at end of stream and the
    client sends it back; odhsim keeps that token per session id and binds it when a request completes with a
    response (`on_complete` with ok), so a request sent before its predecessor finished carries the older token.
    """

    TYPE = "session-affinity-scorer"
    Params = NoParams
    __slots__ = ("_last",)

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[int, str] = {}

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> SessionAffinityScorer:
        return cls()

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        target = self._last.get(request.session) if request.session != NO_SESSION else None
        if target is None:
            return [0.0] * len(endpoints)
        return [1.0 if e.name == target else 0.0 for e in endpoints]

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        if ok and request.session != NO_SESSION:
            self._last[request.session] = endpoint


class LoraAffinityScorer(Plugin):
    """How cheaply the endpoint can serve the request's LoRA adapter (vllm:lora_requests_info), in this order:
    adapter active: 1.0; a free adapter slot (active + waiting < max_adapters): 0.8; adapter waiting: 0.6;
    else 0. A free slot outranks "waiting" because the checks run in that order in llm-d (as in GIE).

    A request without an adapter is scored for its base model name, as llm-d scores the request's target model:
    vLLM never lists the base model as an adapter, so such a request scores 0.8 where a slot is free and 0
    elsewhere; on servers without LoRA (max_adapters = 0) every endpoint scores 0, i.e. the scorer is neutral.
    """

    TYPE = "lora-affinity-scorer"
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> LoraAffinityScorer:
        return cls()

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        target = request.adapter if request.adapter is not None else request.model
        out: list[float] = []
        for e in endpoints:
            active = e.active_adapters
            waiting = e.waiting_adapters
            if target in active:
                out.append(1.0)
            elif len(active) + len(waiting) < e.max_adapters:
                out.append(0.8)
            elif target in waiting:
                out.append(0.6)
            else:
                out.append(0.0)
        return out


SCORERS: tuple[type[Plugin], ...] = (
    QueueScorer,
    RunningRequestsScorer,
    KvCacheUtilizationScorer,
    LoadAwareScorer,
    PrefixCacheScorer,
    ActiveRequestScorer,
    TokenLoadScorer,
    SessionAffinityScorer,
    LoraAffinityScorer,
)
