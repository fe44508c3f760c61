"""Per-model state of the live gateway and the request (`Job`) moving through it: plain data and small queries.

A `ModelRoute` holds what only the live engine has (the deployment, the replicas' addresses and scrapes) around
the gateway core's state for the model (`core`, a policies.gateway RouteState); every decision is the core's.
A `Job` is the engine's side of one request: the core's `Ticket` and the actions the core addressed to it, which
the request's handler awaits."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable
from typing import Literal

import numpy as np

from odhsim.rng import RngStreams
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from policies.controlplane.metrics import ConcurrencyIntegral
from policies.flowcontrol.config import FlowControl, build_flow_control
from policies.flowcontrol.priority import PRIORITY_CLASSES
from policies.gateway.route import RouteState
from policies.gateway.types import Dispatch, Respond, Ticket
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.config import build_breaker, build_outlier_detector, build_retry
from policies.resilience.outlier import OutlierDetector
from policies.resilience.retry import EnvoyRetry, LadderRetry
from policies.routing.config import build_router
from policies.routing.framework import Router
from policies.routing.types import NO_SESSION
from runtime.gateway.upstream import Upstream

Outcome = Literal["shed", "timeout", "failed"]
CacheKeyFn = Callable[[str, str], "int | None"]
"""(model name, version) -> the response-cache key of a request, or None when it may not be cached."""

_HTTP_STATUS = {"shed": 429, "timeout": 503}
_FAILED_STATUS = {"upstream_failed": 502, "aborted": 502, "client_gone": 499}


class GatewayError(Exception):
    """A request the gateway ends itself: shed (429), timed out or failed (5xx), with a reason slug and text."""

    def __init__(self, status: int, outcome: Outcome, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.reason = reason
        self.message = message

    @classmethod
    def of(cls, answer: Respond) -> GatewayError:
        """The HTTP answer of one of the core's final answers: shed 429; upstream failures 502; the rest 503."""
        status = _HTTP_STATUS.get(answer.status) or _FAILED_STATUS.get(answer.reason, 503)
        outcome: Outcome = answer.status if answer.status in ("shed", "timeout") else "failed"  # type: ignore[assignment]
        return cls(status, outcome, answer.reason, answer.detail or answer.reason)


def session_id(tenant: str, header: str | None) -> int:
    """The router's session number for a client's `x-session-id` (scoped by tenant, so two tenants' sessions never
    share a binding); NO_SESSION without one."""
    if not header:
        return NO_SESSION
    digest = hashlib.blake2b(f"{tenant}\0{header}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # non-negative, never NO_SESSION (-1)


class Job:
    """One client request inside the gateway, across its attempts: the core's ticket and its mailbox."""

    __slots__ = ("cache_key_for", "counted", "inbox", "model", "request_id", "ticket", "waiter")

    def __init__(self, ticket: Ticket, request_id: str, model: str, cache_key_for: CacheKeyFn | None) -> None:
        self.ticket = ticket
        self.request_id = request_id
        self.model = model
        self.cache_key_for = cache_key_for
        self.inbox: deque[Dispatch | Respond] = deque()  # the core's Dispatch / Respond for this request
        self.waiter: asyncio.Future[None] | None = None
        self.counted: ConcurrencyIntegral | None = None  # the revision's integral it is held in, until its answer

    @property
    def rid(self) -> int:
        return self.ticket.id

    @property
    def arrival(self) -> float:
        return self.ticket.arrival

    @property
    def attempts(self) -> int:
        """Tries sent to a replica, on any model (the fallback included)."""
        return self.ticket.attempt

    @property
    def retries(self) -> int:
        """Attempts beyond the first (a move to the fallback model included): the `x-odhsim-retries` header."""
        return max(0, self.ticket.attempt - 1)

    @property
    def cached(self) -> bytes | None:
        """The response cache's answer when the request was a hit."""
        found = self.ticket.cache_found
        return found.value if found is not None and isinstance(found.value, bytes) else None

    @property
    def cache_tier(self) -> str:
        found = self.ticket.cache_found
        return (found.tier if found is not None else None) or "local"

    def deliver(self, action: Dispatch | Respond) -> None:
        self.inbox.append(action)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class ModelRoute:
    """What the live gateway keeps for one model: the deployment, its replicas, the core's state, rate counters."""

    def __init__(
        self,
        index: int,
        deployment: ModelDeployment,
        router: Router,
        flow: FlowControl | None,
        breaker: CircuitBreaker | None,
        outlier: OutlierDetector | None,
        retry: EnvoyRetry | LadderRetry | None,
        limit: int | None,
        ttft_targets: tuple[float | None, ...],
        now: float,
    ) -> None:
        self.deployment = deployment
        self.name = deployment.name
        self.version = deployment.version
        self.core = RouteState(
            index, deployment.name, deployment.version, router, flow=flow, limit=limit, ttft_targets=ttft_targets
        )
        self.core.breaker = breaker
        self.core.outlier = outlier
        self.core.retry = retry
        self.core.scales = deployment.replicas > 0 or deployment.autoscaling is not None
        self._fallback: ModelRoute | None = None
        self.upstreams: dict[str, Upstream] = {}
        self.rate_since = now
        self.rate_seen = 0
        # Requests held for this model integrated over time (request-seconds), kept only when an autoscaler reads
        # it: Knative's KPA scales on concurrency averaged over time, not on a point sample at its tick.
        self.concurrency: ConcurrencyIntegral | None = (
            None if deployment.autoscaling is None else ConcurrencyIntegral(now)
        )

    # -- the core's state, read --------------------------------------------------------------------------------
    @property
    def router(self) -> Router:
        return self.core.router

    @property
    def flow(self) -> FlowControl | None:
        return self.core.flow

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self.core.breaker

    @property
    def outlier(self) -> OutlierDetector | None:
        return self.core.outlier

    @property
    def retry(self) -> EnvoyRetry | LadderRetry | None:
        return self.core.retry

    @property
    def limit(self) -> int | None:
        return self.core.limit

    @property
    def fallback(self) -> ModelRoute | None:
        return self._fallback

    @fallback.setter
    def fallback(self, route: ModelRoute | None) -> None:
        self._fallback = route
        self.core.fallback = None if route is None else route.core

    @property
    def rejection(self) -> str | None:
        """Why the deployment was rejected (no replica will ever come), or None."""
        return self.core.rejection or None

    @property
    def arrivals(self) -> int:
        return self.core.arrivals

    @property
    def last_arrival(self) -> float:
        return self.core.last_arrival

    @property
    def ready(self) -> list[Upstream]:
        return [self.upstreams[s.name] for s in self.core.ready if s.name in self.upstreams]

    @property
    def will_have_replicas(self) -> bool:
        """Something will bring a replica up: replicas are declared, or an autoscaler may add them."""
        return not self.core.rejection and self.core.scales

    @property
    def can_scale_from_zero(self) -> bool:
        a = self.deployment.autoscaling
        return a is not None and int(a.params.get("min_replicas", 1)) == 0

    def queued(self) -> int:
        return self.core.queued()

    def in_flight(self) -> int:
        return self.core.in_flight()

    def replica_in_flight(self, name: str) -> int:
        slot = self.core.slots.get(name)
        return 0 if slot is None else slot.in_flight

    def ejected(self, now: float) -> set[str]:
        return self.core.ejected(now)

    def breaker_state(self, now: float) -> str | None:
        return None if self.breaker is None else self.breaker.state(now)


def build_routes(scenario: Scenario, streams: RngStreams, now: float) -> dict[str, ModelRoute]:
    """Each model's route with the policies the scenario's gateway section asks for (each drawing on its own named
    random stream, as the simulator's do), fallbacks linked."""
    gw = scenario.gateway
    targets = ttft_targets(scenario)
    routes: dict[str, ModelRoute] = {}
    for i, m in enumerate(scenario.models):
        router = build_router(gw.router, streams.get(f"router.{m.name}"))
        flow = None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{m.name}"))
        breaker = outlier = retry = None
        if gw.resilience is not None:
            breaker = build_breaker(gw.resilience, streams.get(f"breaker.{m.name}"))
            outlier = build_outlier_detector(gw.resilience, streams.get(f"outlier.{m.name}"))
            retry = build_retry(gw.resilience, streams.get(f"retry.{m.name}"))
        routes[m.name] = ModelRoute(
            i, m, router, flow, breaker, outlier, retry, gw.max_in_flight_per_replica, targets, now
        )
    for m in scenario.models:
        if m.fallback is not None:
            routes[m.name].fallback = routes[m.fallback]
    return routes


def ttft_targets(scenario: Scenario) -> tuple[float | None, ...]:
    """Each class's TTFT target, by priority index (the EDF deadline of flow control's `deadline: slo`)."""
    return tuple(scenario.slo_for(c).ttft_s for c in PRIORITY_CLASSES)


def new_ticket(
    rid: int, index: int, priority_class: str, tenant: str, arrival: float, prompt_tokens: int, blocks: np.ndarray,
    session: int,
) -> Ticket:  # fmt: skip
    return Ticket(
        rid, index, PRIORITY_CLASSES.index(priority_class), tenant, arrival, prompt_tokens, blocks, session=session
    )
