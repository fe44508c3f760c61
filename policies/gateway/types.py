"""What the gateway core is fed and what it answers: the request ticket, endpoint slots, outcomes and actions.

The engines build a `Ticket` per accepted request and an `EndpointSlot` per replica; the core mutates both (they are
its state, not snapshots) and answers every event with a list of frozen actions the engine carries out in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from policies.routing.types import NO_SESSION, EndpointState, RouteRequest

if TYPE_CHECKING:
    from policies.gateway.route import RouteState

# -- statuses of a final answer (the results schema's names) --------------------------------------------------------
OK = "ok"
SHED = "shed"
FAILED = "failed"
TIMEOUT = "timeout"

# -- how an attempt ended (besides the retry failure kinds of policies.resilience.retry.FAILURE_KINDS) --------------
DONE = "ok"
"""The replica answered (2xx): counts as a success for the endpoint."""
REQUEST_FAULT = "request-fault"
"""The replica answered 4xx because of the request itself: a completed attempt that does not count against the
endpoint and is never retried; the client gets the replica's answer."""
ABORTED = "aborted"
"""The engine ended the attempt for good (a replica refused the request, or its drain timed out): counts against the
endpoint, is not retried, and the request fails with the engine's detail."""
ABANDONED = "abandoned"
"""The client left (or the gateway is stopping): only the slot is released; nothing is counted."""


class ScrapedEndpoint(Protocol):
    """An engine's replica as the router sees it: the metrics of its latest scrape."""

    def scraped_state(self) -> EndpointState: ...


class EndpointSlot:
    """One replica of one revision, as the core tracks it: the attempts it holds and whether it takes new ones."""

    __slots__ = ("draining", "in_flight", "name", "source")

    def __init__(self, name: str, source: ScrapedEndpoint) -> None:
        self.name = name
        self.source = source
        self.in_flight = 0
        self.draining = False


class Ticket:
    """One accepted request inside the core, across its attempts; `ref` is the engine's own object for it."""

    __slots__ = (
        "adapter",
        "arrival",
        "attempt",
        "blocks",
        "cache_found",
        "cache_hit",
        "cache_key",
        "dispatched_at",
        "done",
        "exclude",
        "excused",
        "failures",
        "id",
        "model",
        "output_tokens",
        "priority",
        "probes",
        "prompt_tokens",
        "ref",
        "retrying",
        "route",
        "rr",
        "session",
        "slot",
        "tenant",
        "waiting",
    )

    def __init__(
        self,
        id: int,
        model: int,
        priority: int,
        tenant: str,
        arrival: float,
        prompt_tokens: int,
        blocks: np.ndarray | None = None,
        session: int = NO_SESSION,
        output_tokens: int = 0,
        adapter: str | None = None,
        ref: Any = None,
    ) -> None:
        self.id = id
        self.model = model  # index of the model in the core's list
        self.priority = priority  # index into PRIORITY_CLASSES (0 = critical)
        self.tenant = tenant
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.blocks = blocks
        self.session = session
        self.output_tokens = output_tokens
        self.adapter = adapter
        self.ref = ref
        self.route: RouteState | None = None  # the revision that holds it (of its model, or of the fallback)
        self.rr: RouteRequest | None = None  # what the router sees (one per model: hooks get the same object)
        self.slot: EndpointSlot | None = None  # the replica of the attempt in progress
        self.dispatched_at = 0.0
        self.attempt = 0  # attempts sent so far (the fallback's included)
        self.failures = 0  # failed attempts that counted
        self.excused = 0  # attempts excused by a gateway stall
        self.exclude: set[str] | None = None  # replicas that failed it (a retry prefers others)
        self.probes: list[RouteState] | None = None  # half-open breakers that let it through as a probe
        self.retrying = False  # counted in its route's retries in flight
        self.waiting = False  # in one of its route's queues
        self.done = False
        self.cache_key: int | None = None
        self.cache_hit = False
        self.cache_found: Any = None  # the response cache's CacheLookup on a hit (its value is the answer)

    @property
    def fallback(self) -> bool:
        """Served (or held) by the fallback model rather than its own."""
        route = self.route
        return route is not None and route.model != self.model


# -- actions ----------------------------------------------------------------------------------------------------------
# Immutable NamedTuples rather than frozen dataclasses: two or three are built per request, and a frozen dataclass's
# __init__ (object.__setattr__ per field) cost the SimPy gateway several percent of its CPU time.
class Dispatch(NamedTuple):
    """Send `ticket` to replica `endpoint` of `ticket.route`: attempt number `attempt` (1 = first; more: a retry,
    on `model`, the fallback's name when `fallback`)."""

    ticket: Ticket
    endpoint: str
    attempt: int
    model: str
    fallback: bool


class Respond(NamedTuple):
    """The request's final answer: `status` (ok, shed, failed, timeout), a reason slug for clients and metrics, and
    the detail text that goes into the results table."""

    ticket: Ticket
    status: str
    reason: str
    detail: str


class WakeAt(NamedTuple):
    """Call `core.timer(now, kind, target)` `after_s` seconds from now (the core ignores a timer it superseded)."""

    after_s: float
    kind: str
    target: Any


class CacheWait(NamedTuple):
    """The response cache was looked up for `ticket` (hit or miss); call `core.cache_done` after `latency_s`."""

    ticket: Ticket
    latency_s: float


class Activate(NamedTuple):
    """Knative's activator: revision `route` has no ready replica; ask its controller for one (requests wait)."""

    route: RouteState


class Record(NamedTuple):
    """Something worth counting or logging: kind (retry, fallback, upstream-failure, excused, alert: a request
    reached the ladder's last rung, `open_breaker_after` failures), model, detail."""

    kind: str
    model: str
    detail: str


Action = Dispatch | Respond | WakeAt | CacheWait | Activate | Record

_tuple_new = tuple.__new__


def new_dispatch(ticket: Ticket, endpoint: str, attempt: int, model: str, fallback: bool) -> Dispatch:
    """`Dispatch(...)` built as its tuple directly: the NamedTuple's own __new__ is a Python function that
    `type.__call__` enters from C, twice the cost (one Dispatch and one Respond per request)."""
    return _tuple_new(Dispatch, (ticket, endpoint, attempt, model, fallback))


def new_respond(ticket: Ticket, status: str, reason: str, detail: str) -> Respond:
    """`Respond(...)` built as its tuple directly (see `new_dispatch`)."""
    return _tuple_new(Respond, (ticket, status, reason, detail))


# timer kinds
SWEEP = "sweep"  # the flow-control queue's next TTL expiry (target: RouteState)
GATE = "gate"  # retry a dispatch held by the saturation gate after a scrape interval (target: RouteState)
ACTIVATOR = "activator"  # the activator's timeout for a held request (target: Ticket)
BACKOFF = "backoff"  # a retry's back-off is over (target: Ticket)
OUTLIER = "outlier"  # the outlier detector's next sweep (target: RouteState)
