"""Per-model state of the live gateway (replicas, policies, queues, counters) and the request (`Job`) moving
through it. Plain data and small queries; the decisions live in `runtime.gateway.core`."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from policies.flowcontrol.config import FlowControl
from policies.flowcontrol.priority import PRIORITY_CLASSES, class_to_priority
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.outlier import OutlierDetector
from policies.resilience.retry import EnvoyRetry, LadderRetry
from policies.routing.framework import Router
from policies.routing.types import EndpointState, RouteRequest
from runtime.gateway.limits import BLOCK_TOKENS
from runtime.gateway.upstream import Upstream

Outcome = Literal["shed", "timeout", "failed"]


class GatewayError(Exception):
    """A request the gateway ends itself: shed (429), timed out or failed (5xx), with a reason slug and text."""

    def __init__(self, status: int, outcome: Outcome, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.reason = reason
        self.message = message


@dataclass(eq=False, slots=True)
class Job:
    """One client request inside the gateway (across its attempts)."""

    rid: int
    request_id: str
    model: str
    priority_class: str
    tenant: str
    prompt_tokens: int
    blocks: np.ndarray
    arrival: float
    route: ModelRoute | None = None
    slot: asyncio.Future[Upstream] | None = None
    exclude: set[str] = field(default_factory=set)
    failures: int = 0
    attempts: int = 0  # tries sent to a replica, on any model (the fallback included)
    retrying: bool = False
    probes: list[ModelRoute] = field(default_factory=list)  # half-open breakers that let it through as a probe
    attempted: set[str] = field(default_factory=set)  # models that got an attempt
    _route_requests: dict[str, RouteRequest] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        """Attempts beyond the first (a move to the fallback model included): the `x-odhsim-retries` header."""
        return max(0, self.attempts - 1)

    @property
    def served_model(self) -> str:
        return self.model if self.route is None else self.route.name

    def route_request(self, route: ModelRoute) -> RouteRequest:
        """What the router sees (one object per model, so dispatch and completion hooks get the same one)."""
        rr = self._route_requests.get(route.name)
        if rr is None:
            rr = self._route_requests[route.name] = self._make_route_request(route)
        return rr

    def _make_route_request(self, route: ModelRoute) -> RouteRequest:
        return RouteRequest(
            request_id=self.rid,
            model=route.name,
            prompt_tokens=self.prompt_tokens,
            block_ids=self.blocks,
            block_tokens=BLOCK_TOKENS,
            priority=class_to_priority(self.priority_class),
            tenant=self.tenant,
        )


class ModelRoute:
    """Everything the gateway keeps for one model: replicas, policies, queues, counters."""

    def __init__(
        self,
        deployment: ModelDeployment,
        router: Router,
        flow: FlowControl | None,
        breaker: CircuitBreaker | None,
        outlier: OutlierDetector | None,
        retry: EnvoyRetry | LadderRetry | None,
        limit: int | None,
        ttft_targets: dict[str, float | None],
        now: float,
    ) -> None:
        self.deployment = deployment
        self.name = deployment.name
        self.version = deployment.version
        self.router = router
        self.flow = flow
        self.breaker = breaker
        self.outlier = outlier
        self.retry = retry
        self.limit = limit
        self.ttft_targets = ttft_targets
        self.fallback: ModelRoute | None = None
        self.rejection: str | None = None  # why the deployment was rejected (no replica will ever come)
        self.upstreams: dict[str, Upstream] = {}
        self.fifo: deque[Job] = deque()  # without flow control
        self.held: dict[int, Job] = {}  # in the flow-control queue, by rid
        self.retries: deque[Job] = deque()  # admitted jobs waiting for another attempt
        self.pumping = False
        self.retries_in_flight = 0
        self.arrivals = 0
        self.last_arrival = math.nan
        self.rate_since = now
        self.rate_seen = 0
        self.next_outlier_sweep = now + (outlier.interval_s if outlier is not None else math.inf)

    @property
    def ready(self) -> list[Upstream]:
        return [u for u in self.upstreams.values() if not u.draining]

    @property
    def will_have_replicas(self) -> bool:
        """Something will bring a replica up: replicas are declared, or an autoscaler may add them."""
        if self.rejection is not None:
            return False
        return self.deployment.replicas > 0 or self.deployment.autoscaling is not None

    @property
    def can_scale_from_zero(self) -> bool:
        a = self.deployment.autoscaling
        return a is not None and int(a.params.get("min_replicas", 1)) == 0

    def queued(self) -> int:
        return len(self.fifo) + len(self.held) + len(self.retries)

    def in_flight(self) -> int:
        return sum(u.in_flight for u in self.upstreams.values())

    def has_room(self) -> bool:
        return any(self.limit is None or u.in_flight < self.limit for u in self.ready)

    def ejected(self, now: float) -> set[str]:
        return self.outlier.ejected(now) if self.outlier is not None else set()

    def states(self, now: float) -> list[EndpointState]:
        ejected = self.ejected(now)
        return [u.endpoint_state(u.name not in ejected) for u in self.ready]

    def breaker_state(self, now: float) -> str | None:
        return None if self.breaker is None else self.breaker.state(now)


def ttft_targets(scenario: Scenario) -> dict[str, float | None]:
    """Each class's TTFT target (the EDF deadline of flow control's `deadline: slo`)."""
    return {c: scenario.slo_for(c).ttft_s for c in PRIORITY_CLASSES}
