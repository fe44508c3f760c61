"""The core's state for one revision of one model (and the canary split that picks between a model's revisions)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol

from policies.flowcontrol.config import FlowControl
from policies.gateway.types import EndpointSlot, ScrapedEndpoint, Ticket
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.outlier import OutlierDetector
from policies.resilience.retry import EnvoyRetry, LadderRetry
from policies.routing.canary import LATEST
from policies.routing.framework import Router
from policies.routing.types import EndpointState


class SplitPolicy(Protocol):
    def pick(self, now: float, percent: float) -> int: ...


class CanarySplit:
    """KServe's canaryTrafficPercent between a model's previous revision (0) and its latest (1). Until a canary
    replica is ready everything goes to the previous revision, as Knative routes only to Ready revisions."""

    __slots__ = ("percent", "phase", "ready", "split")

    def __init__(self, split: SplitPolicy, percent: float) -> None:
        self.split = split
        self.percent = percent
        self.phase = "pending"  # pending -> rolling -> promoted | rolled_back
        self.ready = False

    def choose(self, now: float) -> int:
        """The revision an arriving request goes to."""
        if not self.ready or self.phase == "rolled_back":
            return 0
        if self.phase == "promoted":
            return 1
        return 1 if self.split.pick(now, self.percent) == LATEST else 0


class RouteState:
    """Replicas, policies and queues of one revision; the model-wide parts (breaker, outlier detector, retry policy,
    fallback, split) are read from the model's primary (revision 0)."""

    __slots__ = (
        "arrivals",
        "breaker",
        "fallback",
        "fifo",
        "flow",
        "gate_pending",
        "held",
        "last_arrival",
        "limit",
        "model",
        "name",
        "next_outlier_sweep",
        "outlier",
        "primary",
        "ready",
        "ref",
        "rejection",
        "retired",
        "retries",
        "retries_in_flight",
        "retry",
        "revision",
        "revisions",
        "router",
        "scales",
        "slots",
        "split",
        "sweep_at",
        "ttft_targets",
        "version",
    )

    def __init__(
        self,
        model: int,
        name: str,
        version: str,
        router: Router,
        *,
        flow: FlowControl | None = None,
        limit: int | None = None,
        ttft_targets: tuple[float | None, ...] = (),
        revision: int = 0,
    ) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.router = router
        self.flow = flow
        self.limit = limit
        self.ttft_targets = ttft_targets  # per priority class index: the EDF deadline of `deadline: slo`
        self.revision = revision
        self.primary: RouteState = self
        self.revisions: list[RouteState] = [self]
        self.split: CanarySplit | None = None
        self.fallback: RouteState | None = None
        self.breaker: CircuitBreaker | None = None
        self.outlier: OutlierDetector | None = None
        self.retry: EnvoyRetry | LadderRetry | None = None
        self.rejection = ""  # why the deployment was rejected (no replica will ever come)
        self.scales = False  # something may bring a replica up later (an autoscaler, replicas starting)
        self.retired = False  # promoted away from or rolled back: takes no new requests
        self.ready: list[EndpointSlot] = []  # replicas taking new requests, in the order they joined
        self.slots: dict[str, EndpointSlot] = {}  # every replica still holding or taking requests
        self.fifo: deque[Ticket] = deque()  # without flow control
        self.held: dict[int, Ticket] = {}  # in the flow-control queue, by ticket id
        self.retries: deque[Ticket] = deque()  # admitted requests waiting for another attempt (served first)
        self.gate_pending = False
        self.sweep_at = math.inf
        self.retries_in_flight = 0
        self.next_outlier_sweep = math.inf
        self.arrivals = 0  # requests the split sent here (what the revision's autoscaler counts)
        self.last_arrival = math.nan
        self.ref: Any = None  # the engine's own object for this revision (the adapter sets and reads it)

    # -- queries ------------------------------------------------------------------------------------------------
    def queued(self) -> int:
        return len(self.fifo) + len(self.held) + len(self.retries)

    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.slots.values())

    def has_room(self) -> bool:
        limit = self.limit
        if limit is None:
            return bool(self.ready)
        return any(s.in_flight < limit for s in self.ready)

    def ejected(self, now: float) -> set[str]:
        outlier = self.primary.outlier
        return outlier.ejected(now) if outlier is not None else set()

    def states(self) -> list[EndpointState]:
        """The ready replicas' scraped metrics (what admission and the saturation detector see)."""
        return [s.source.scraped_state() for s in self.ready]

    def unqueue(self, t: Ticket) -> None:
        """Take a waiting `t` out of whichever of this revision's queues holds it."""
        if not t.waiting:
            return
        t.waiting = False
        if self.held.pop(t.id, None) is not None:
            assert self.flow is not None
            self.flow.queue.remove(t.id)
            return
        for q in (self.fifo, self.retries):
            try:
                q.remove(t)
                return
            except ValueError:
                pass

    def take_waiting(self, now: float) -> list[Ticket]:
        """Empty every queue of this revision (retries first, then arrival order)."""
        waiting = [*self.retries, *self.fifo]
        self.retries.clear()
        self.fifo.clear()
        if self.flow is not None:
            while (item := self.flow.queue.pop(now)) is not None:
                waiting.append(self.held.pop(item.request_id))
        for t in self.held.values():  # not poppable (cannot happen with the shipped queues)
            assert self.flow is not None
            self.flow.queue.remove(t.id)
            waiting.append(t)
        self.held.clear()
        for t in waiting:
            t.waiting = False
        return waiting

    # -- membership ---------------------------------------------------------------------------------------------
    def add(self, name: str, source: ScrapedEndpoint) -> EndpointSlot:
        slot = self.slots.get(name)
        if slot is None or slot.source is not source:
            old = slot
            slot = EndpointSlot(name, source)
            if old is not None:  # a replacement under the same name: the old one's attempts still end here
                slot.in_flight = old.in_flight
                if old in self.ready:
                    self.ready.remove(old)
            self.slots[name] = slot
        slot.draining = False
        if slot not in self.ready:
            self.ready.append(slot)
        self._hosts_changed()
        return slot

    def drain(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is not None and not slot.draining:
            slot.draining = True
            self.ready.remove(slot)
            if slot.in_flight == 0:
                del self.slots[name]

    def remove(self, name: str) -> None:
        slot = self.slots.pop(name, None)
        if slot is None:
            return
        if not slot.draining:
            slot.draining = True
            self.ready.remove(slot)
        self._hosts_changed()

    def release(self, slot: EndpointSlot) -> None:
        """An attempt on `slot` ended; a draining replica with nothing left is forgotten."""
        slot.in_flight -= 1
        if slot.draining and slot.in_flight == 0 and self.slots.get(slot.name) is slot:
            del self.slots[slot.name]

    def _hosts_changed(self) -> None:
        outlier = self.primary.outlier
        if outlier is not None:
            outlier.set_hosts([n for r in self.primary.revisions for n in r.slots])
