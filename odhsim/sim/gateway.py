"""The gateway: a central FCFS queue per model and a router from `policies/` choosing among scraped replicas.

The gateway holds a request only while no replica may take it (`max_in_flight_per_replica`); with no limit it
routes at once and queues form inside the model servers, as with llm-d's endpoint picker.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.request import STATUS_FAILED, SimRequest
from policies.routing.framework import Router
from policies.routing.types import RouteRequest

_NO_BLOCKS = np.zeros(0, dtype=np.int64)


class ModelRoute:
    """Everything the gateway keeps for one model: its queue, replicas and router."""

    __slots__ = ("by_name", "limit", "name", "pumping", "queue", "replicas", "router")

    def __init__(self, name: str, replicas: list[ReplicaBase], router: Router, limit: int | None) -> None:
        self.name = name
        self.replicas = replicas
        self.by_name = {r.name: r for r in replicas}
        self.router = router
        self.limit = limit
        self.queue: deque[SimRequest] = deque()
        self.pumping = False


class Gateway:
    def __init__(
        self,
        env: simpy.Environment,
        routes: list[ModelRoute],
        replicas: list[ReplicaBase],
        log: RequestLog,
        tenant_names: list[str],
        block_tokens: int,
    ) -> None:
        self.env = env
        self.routes = routes
        self.replicas = replicas  # every replica, by its global index
        self.log = log
        self.tenant_names = tenant_names
        self.block_tokens = block_tokens
        self.in_flight = 0
        self.arrivals = [0] * len(routes)
        self.completed = 0

    def arrive(self, req: SimRequest) -> None:
        self.in_flight += 1
        route = self.routes[req.model]
        self.arrivals[req.model] += 1
        if not route.replicas:
            self.finish(req, self.env.now, STATUS_FAILED, "model has no replicas")
            return
        if route.queue or route.pumping:
            # The head of the queue already found no replica with room, and nothing has freed since (every
            # finish drains the queue), so the newcomer can only wait behind it.
            route.queue.append(req)
        elif not self._route(route, req):
            route.queue.append(req)

    def _route_request(self, route: ModelRoute, req: SimRequest) -> RouteRequest:
        if req.route is None:
            req.route = RouteRequest(
                request_id=req.row,
                model=route.name,
                prompt_tokens=req.prompt_tokens,
                block_ids=req.blocks if req.blocks is not None else _NO_BLOCKS,
                block_tokens=self.block_tokens,
                session=req.session,
                priority=req.priority,
                tenant=self.tenant_names[req.tenant] if self.tenant_names else "",
            )
        return req.route

    def _route(self, route: ModelRoute, req: SimRequest) -> bool:
        """Pick a replica and hand the request over; False when the limit leaves no candidate."""
        now = self.env.now
        if route.limit is None:
            candidates = route.replicas
        else:
            candidates = [r for r in route.replicas if r.in_flight < route.limit]
            if not candidates:
                return False
        rr = self._route_request(route, req)
        decision = route.router.pick(now, rr, [r.scraped_state() for r in candidates])
        if decision.endpoint is None:
            self.finish(req, now, STATUS_FAILED, decision.reason or "no endpoint")
            return True
        route.router.on_dispatch(now, rr, decision.endpoint)
        route.by_name[decision.endpoint].submit(req)
        return True

    def finish(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        """Final status of a request (from a replica or the gateway itself): log it, free the slot, move on."""
        self.in_flight -= 1
        self.completed += 1
        self.log.finish(req, now, status, reason)
        route = self.routes[req.model]
        if req.replica >= 0 and req.route is not None:
            name = self.replicas[req.replica].name
            route.router.on_complete(now, req.route, name, now - req.arrival_s, status == "ok")
        if req.replica >= 0 and route.queue:
            self._pump(route)

    def _pump(self, route: ModelRoute) -> None:
        """Dispatch queued requests while a replica has room. Not re-entrant: a replica that refuses a request
        synchronously calls `finish` from inside `_route`; that inner call leaves the draining to this loop."""
        if route.pumping:
            return
        route.pumping = True
        try:
            while route.queue and self._route(route, route.queue[0]):
                route.queue.popleft()
        finally:
            route.pumping = False

    def queued(self, model: int) -> int:
        return len(self.routes[model].queue)
