"""Items, results and the interfaces of the gateway's flow control (queue, saturation detector, admitter).

Both engines build `QueuedRequest`s from their own world and call the same objects; every method takes `now`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies.routing.types import EndpointState


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """One request waiting in the gateway's flow-control queue.

    priority        llm-d integer priority (see policies.flowcontrol.priority; < 0 is sheddable)
    priority_class  critical / high / normal / low: capacity and `lengths()` are kept per class
    deadline        absolute EDF deadline (math.inf if none); the engine computes it (enqueue + TTL or SLO TTFT)
    expires_at      absolute TTL expiry (math.inf if none)
    size            cost unit for fair sharing (1 = count requests; the engine may pass tokens); must be > 0
    """

    request_id: int
    priority: int
    priority_class: str
    tenant: str
    enqueued_at: float
    deadline: float = math.inf
    expires_at: float = math.inf
    size: int = 1

    def __post_init__(self) -> None:
        if not self.size > 0:
            raise ValueError(f"request {self.request_id}: size must be > 0, got {self.size}")


@dataclass(frozen=True, slots=True)
class PushResult:
    """Outcome of a push: accepted, or rejected with a reason; `evicted` items were pushed out to make room."""

    accepted: bool
    reason: str = ""
    evicted: tuple[QueuedRequest, ...] = ()


@runtime_checkable
class FlowQueue(Protocol):
    """The gateway's flow-control queue. `now` must not decrease from call to call."""

    def push(self, now: float, item: QueuedRequest) -> PushResult:
        """Enqueue, evicting a sheddable item when full (llm-d's rule), or reject with a reason."""
        ...

    def pop(self, now: float) -> QueuedRequest | None:
        """The next item to dispatch; an item with expires_at <= now is never returned (expire() returns it)."""
        ...

    def expire(self, now: float) -> list[QueuedRequest]:
        """TTL sweep: remove and return every item with expires_at <= now, earliest expiry first."""
        ...

    def next_expiry(self) -> float:
        """Earliest expires_at still queued (math.inf if none), so the engine can schedule a sweep."""
        ...

    def remove(self, request_id: int) -> QueuedRequest | None:
        """Take one item out (client gone, cancelled); None when it is not queued."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, request_id: object) -> bool: ...

    def lengths(self) -> dict[str, int]:
        """Queued items per priority class (every class present, zeros included)."""
        ...


@runtime_checkable
class SaturationDetector(Protocol):
    """Pool saturation (>= 0; 1.0 = at the configured limit, may exceed 1) plus optional dispatch hooks."""

    def saturation(self, now: float, endpoints: Sequence[EndpointState]) -> float: ...

    def on_dispatch(self, now: float, request_id: int, endpoint: str) -> None: ...

    def on_complete(self, now: float, request_id: int, endpoint: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """Admit or reject at the door; a rejection's reason names the rule and the saturation value."""

    admitted: bool
    reason: str = ""


@runtime_checkable
class Admitter(Protocol):
    def admit(
        self, now: float, priority: int, saturation: float, endpoints: Sequence[EndpointState] | None = None
    ) -> AdmissionDecision:
        """`saturation` is the configured detector's; an admitter that reads the pods itself (llm-d's probabilistic
        admitter) uses `endpoints` when the engine passes them."""
        ...
