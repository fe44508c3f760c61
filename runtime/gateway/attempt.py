"""One dispatched try of a request at one replica, as the HTTP layer holds it: forward.py sends it, whoever sees
it end (the gateway for a whole answer or a failure, the stream relay for a stream) reports that end once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.gateway.route import Job, ModelRoute
from runtime.gateway.upstream import Upstream

if TYPE_CHECKING:
    from runtime.gateway.core import Gateway


class Attempt:
    """One dispatched try at one replica; `done` reports its end to the core exactly once."""

    __slots__ = ("_gateway", "finished", "job", "route", "started", "upstream")

    def __init__(self, gateway: Gateway, job: Job, route: ModelRoute, upstream: Upstream, started: float) -> None:
        self._gateway = gateway
        self.job = job
        self.route = route
        self.upstream = upstream
        self.started = started
        self.finished = False

    def done(
        self, outcome: str, detail: str = "", *, kind: str = "", excused: bool = False, value: object = None,
        size_bytes: int = 0,
    ) -> None:  # fmt: skip
        """`outcome`: ok, request-fault, aborted (failed after bytes went out: never retried; `kind` says how),
        abandoned (the client left), or a retry failure kind; `excused`: the gateway's own stall made it fail."""
        if self.finished:
            return
        self.finished = True
        self._gateway._attempt_done(self, outcome, detail, kind or outcome, excused, value, size_bytes)
