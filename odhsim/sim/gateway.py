"""The gateway: response cache, admission and flow control, then a router from `policies/` picking a replica.

Per model, a request goes: response-cache lookup (when configured and the prompt is known) -> admission (shed
sheddable requests at saturation) -> the flow-control queue (priority, fair sharing, EDF, TTL) -> dispatch while a
replica has room and, with llm-d's gate, while the pool is not saturated -> the routing profile picks a replica
from metrics scraped up to one interval ago. Without a flow-control section the gateway routes at once (queues
form inside the model servers, as with a bare llm-d endpoint picker) or holds a FIFO only while
`max_in_flight_per_replica` leaves no replica with room. A model with no replica sends requests to its fallback.

A model in a canary rollout has two revisions (its version and the canary), each a `ModelRoute` with its own
replicas, router, queue and controller; the model's rollout (odhsim.sim.rollout) picks the revision of each
arriving request before anything else, as KServe's ingress splits traffic between revisions.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.request import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SHED,
    STATUS_TIMEOUT,
    STATUS_UNFINISHED,
    STATUSES,
    SimRequest,
)
from odhsim.workload.schema import PRIORITY_CLASSES
from policies.caching.key import response_key
from policies.caching.response_cache import TieredResponseCache
from policies.flowcontrol.config import FlowControl
from policies.flowcontrol.priority import class_to_priority
from policies.resilience.breaker import CircuitBreaker
from policies.routing.framework import Router
from policies.routing.types import RouteRequest

_NO_BLOCKS = np.zeros(0, dtype=np.int64)
_UNFINISHED = STATUSES.index(STATUS_UNFINISHED)

ACTIVATOR_TIMEOUT_S = 300.0
"""How long Knative's activator holds a request for a revision with no ready replica: the revision's
timeoutSeconds, default 300 s (knative/serving pkg/apis/config/defaults.go DefaultRevisionTimeoutSeconds; the
activator's "activator request timeout" handler in cmd/activator/main.go). Past it the request fails."""
NO_REPLICAS = "model has no replicas, no autoscaler and no fallback"


class ModelRoute:
    """Everything the gateway keeps for one model (for one revision of it, in a canary rollout): its replicas,
    router, queue, flow control and controller; the model-wide parts (breaker, fallback) live on the primary."""

    def __init__(
        self,
        name: str,
        version: str,
        replicas: list[ReplicaBase],
        router: Router,
        limit: int | None,
        flow: FlowControl | None = None,
        ttft_targets: tuple[float | None, ...] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.replicas = replicas
        self.by_name = {r.name: r for r in replicas}
        self.router = router
        self.limit = limit
        self.flow = flow
        self.ttft_targets = ttft_targets  # per priority class index, for EDF deadlines
        self.fallback: ModelRoute | None = None
        self.breaker: CircuitBreaker | None = None
        self.controller: Any = None  # the model's ModelController (set by the cluster builder)
        self.rejection = ""  # why the deployment was rejected, when it was
        self.revision = 0  # 0: the model's own version; 1: its canary
        self.primary: ModelRoute = self  # the model's first route (revision 0), which holds the model-wide parts
        self.revisions: list[ModelRoute] = [self]  # on the primary: every revision, by number
        self.rollout: Any = None  # the model's CanaryRollout (odhsim.sim.rollout), on every revision of it
        self.retired = False  # promoted away from or rolled back: takes no new requests
        self.version_code = -1  # the version's code in the requests table
        self.arrivals = 0  # requests the split sent to this revision (what its autoscaler counts)
        self.last_arrival_s = math.nan
        self.queue: deque[SimRequest] = deque()  # FIFO used without flow control
        self.held: dict[int, SimRequest] = {}  # requests in the flow-control queue, by row
        self.pumping = False
        self.retry_pending = False  # a gated dispatch retry is scheduled
        self.sweep_at = math.inf  # time of the scheduled TTL sweep

    def queued(self) -> int:
        return len(self.queue) + len(self.held)

    def has_room(self) -> bool:
        if self.limit is None:
            return bool(self.replicas)
        return any(r.in_flight < self.limit for r in self.replicas)

    @property
    def autoscaled(self) -> bool:
        return self.controller is not None and self.controller.autoscaler is not None

    def add_replica(self, replica: ReplicaBase) -> None:
        self.replicas.append(replica)
        self.by_name[replica.name] = replica

    def remove_replica(self, replica: ReplicaBase) -> None:
        """Stop sending it requests (it drains); requests it holds still finish through the gateway."""
        self.replicas.remove(replica)
        del self.by_name[replica.name]


class Gateway:
    def __init__(
        self,
        env: simpy.Environment,
        routes: list[ModelRoute],
        replicas: list[ReplicaBase],
        log: RequestLog,
        tenant_names: list[str],
        block_tokens: int,
        scrape_interval_s: float,
        response_cache: TieredResponseCache | None = None,
    ) -> None:
        self.env = env
        self.routes = routes
        self.replicas = replicas  # every replica, by its global index
        self.log = log
        self.tenant_names = tenant_names
        self.block_tokens = block_tokens
        self.scrape_interval_s = scrape_interval_s
        self.cache = response_cache
        self.in_flight = 0
        self.arrivals = [0] * len(routes)
        self.last_arrival_s = [math.nan] * len(routes)
        self.completed = 0

    # -- arrival: response cache, then admission ----------------------------------------------------------
    def arrive(self, req: SimRequest) -> None:
        self.in_flight += 1
        self.arrivals[req.model] += 1
        self.last_arrival_s[req.model] = req.arrival_s
        route = self._split(self.routes[req.model], req)
        route.arrivals += 1
        route.last_arrival_s = req.arrival_s
        if self.cache is not None and req.blocks is not None:
            req.cache_key = self._cache_key(route, req)
            self._lookup_cache(req)
        else:
            self._enter(req)

    def _split(self, model: ModelRoute, req: SimRequest) -> ModelRoute:
        """The revision of `model` (its first route) that takes `req`: the rollout's choice, else the only one."""
        route = model if model.rollout is None else model.rollout.choose()
        req.version = route.revision
        return route

    def serving_route(self, req: SimRequest) -> ModelRoute:
        """The revision route that holds (or held) `req`: of its model, or of the fallback it went to."""
        model = self.routes[req.model]
        if req.fallback:
            assert model.fallback is not None
            model = model.fallback
        return model.revisions[req.version]

    def _cache_key(self, route: ModelRoute, req: SimRequest) -> int:
        sampling = (("max_tokens", req.output_tokens),)
        assert self.cache is not None
        tenant = self.cache.key_tenant(self.tenant_names[req.tenant] if self.tenant_names else "")
        return response_key(
            route.name, route.version, sampling, block_ids=req.blocks, prompt_tokens=req.prompt_tokens, tenant=tenant
        )

    def _lookup_cache(self, req: SimRequest) -> None:
        assert self.cache is not None
        found = self.cache.lookup(self.env.now, req.cache_key)
        req.cache_hit = found.hit
        done = self.env.timeout(found.latency_s, req)
        done.callbacks.append(self._after_lookup)

    def _after_lookup(self, event: simpy.Event) -> None:
        req: SimRequest = event.value
        if req.cache_hit:
            req.first_token_s = self.env.now
            self.finish(req, self.env.now, STATUS_OK, "")
        else:
            self._enter(req)

    def _enter(self, req: SimRequest) -> None:
        model = self.routes[req.model]
        route = model.revisions[req.version]
        if route.retired:  # promoted away from or rolled back while the response cache was looked up
            route = self._split(model, req)
        breaker_open = model.breaker is not None and not model.breaker.allow(self.env.now)
        unserved = not route.replicas and not route.autoscaled  # nothing will ever come up for it
        if (breaker_open or unserved) and model.fallback is not None:
            req.fallback = True
            route = self._split(model.fallback, req)
        elif breaker_open:
            self.finish(req, self.env.now, STATUS_FAILED, "circuit breaker open and no fallback")
            return
        self._admit(route, req)

    def _admit(self, route: ModelRoute, req: SimRequest) -> None:
        """Hand a request to one revision: the activator when it has no replica, else its queue or a replica."""
        if not route.replicas:
            if not route.autoscaled:  # nothing will ever come up for it: fail now, saying why
                self.finish(req, self.env.now, STATUS_FAILED, route.rejection or NO_REPLICAS)
                return
            route.controller.poke()  # the activator holds the request and asks for a replica
            timer = self.env.timeout(ACTIVATOR_TIMEOUT_S, req)
            timer.callbacks.append(self._on_activator_timeout)
        if route.flow is not None:
            self._enqueue(route, req)
        elif route.queue or route.pumping:
            # The head already found no replica with room and nothing has freed since (every finish drains the
            # queue), so the newcomer waits behind it.
            route.queue.append(req)
        elif not self._route(route, req):
            route.queue.append(req)

    def _on_activator_timeout(self, event: simpy.Event) -> None:
        """A request the activator held is still waiting at the gateway (no replica of its revision became ready
        in time, e.g. no GPU or budget for one): it fails with the activator's reason instead of waiting forever."""
        req: SimRequest = event.value
        if req.replica >= 0 or self.log.column("status")[req.row] != _UNFINISHED:
            return  # dispatched to a replica, or already ended (shed, expired, ...)
        route = self.serving_route(req)
        if route.flow is not None:
            if route.held.pop(req.row, None) is None:
                return
            route.flow.queue.remove(req.row)
        else:
            try:
                route.queue.remove(req)
            except ValueError:
                return  # not waiting here (cannot happen while it is unfinished and undispatched)
        reason = f"activator request timeout: no ready replica within {ACTIVATOR_TIMEOUT_S:g} s"
        self.finish(req, self.env.now, STATUS_FAILED, reason)

    # -- flow control -------------------------------------------------------------------------------------
    def _saturation(self, route: ModelRoute) -> float:
        assert route.flow is not None
        return route.flow.saturation.saturation(self.env.now, [r.scraped_state() for r in route.replicas])

    def _enqueue(self, route: ModelRoute, req: SimRequest) -> None:
        flow = route.flow
        assert flow is not None
        now = self.env.now
        verdict = flow.admission.admit(now, class_to_priority(req.priority), self._saturation(route))
        if not verdict.admitted:
            self.finish(req, now, STATUS_SHED, verdict.reason)
            return
        tenant = self.tenant_names[req.tenant] if self.tenant_names else ""
        target = route.ttft_targets[req.priority] if route.ttft_targets else None
        item = flow.make_item(req.row, PRIORITY_CLASSES[req.priority], tenant, now, target)
        pushed = flow.queue.push(now, item)
        for evicted in pushed.evicted:
            self.finish(route.held.pop(evicted.request_id), now, STATUS_SHED, "evicted from a full queue")
        if not pushed.accepted:
            self.finish(req, now, STATUS_SHED, pushed.reason)
            return
        route.held[req.row] = req
        self._schedule_sweep(route)
        self._pump(route)

    def _schedule_sweep(self, route: ModelRoute) -> None:
        assert route.flow is not None
        due = route.flow.queue.next_expiry()
        if due < route.sweep_at:
            route.sweep_at = due
            ev = self.env.timeout(max(0.0, due - self.env.now), route)
            ev.callbacks.append(self._on_sweep)

    def _on_sweep(self, event: simpy.Event) -> None:
        route: ModelRoute = event.value
        if self.env.now < route.sweep_at or route.flow is None:
            return  # superseded by an earlier sweep
        route.sweep_at = math.inf
        now = self.env.now
        for item in route.flow.queue.expire(now):
            waited = now - item.enqueued_at
            self.finish(route.held.pop(item.request_id), now, STATUS_TIMEOUT, f"queued {waited:.1f} s > TTL")
        self._schedule_sweep(route)

    def _on_gate_retry(self, event: simpy.Event) -> None:
        route: ModelRoute = event.value
        route.retry_pending = False
        self._pump(route)

    # -- dispatch -----------------------------------------------------------------------------------------
    def _pump(self, route: ModelRoute) -> None:
        """Dispatch queued requests while a replica has room (and, gated, the pool is not saturated). Not
        re-entrant: a replica refusing a request calls `finish` inside `_route`; that inner call leaves the
        draining to this loop."""
        if route.pumping:
            return
        route.pumping = True
        try:
            if route.flow is None:
                while route.queue and self._route(route, route.queue[0]):
                    route.queue.popleft()
            else:
                self._pump_flow(route)
        finally:
            route.pumping = False

    def _pump_flow(self, route: ModelRoute) -> None:
        flow = route.flow
        assert flow is not None
        now = self.env.now
        while len(flow.queue) and route.has_room():
            if flow.gate_dispatch_on_saturation and not flow.may_dispatch(self._saturation(route)):
                if not route.retry_pending:  # metrics change at the next scrape at the earliest
                    route.retry_pending = True
                    ev = self.env.timeout(self.scrape_interval_s, route)
                    ev.callbacks.append(self._on_gate_retry)
                return
            item = flow.queue.pop(now)
            if item is None:
                return
            self._route(route, route.held.pop(item.request_id))

    def _route_request(self, route: ModelRoute, req: SimRequest) -> RouteRequest:
        if req.route is None:
            req.route = RouteRequest(
                request_id=req.row,
                model=route.name,
                prompt_tokens=req.prompt_tokens,
                block_ids=req.blocks if req.blocks is not None else _NO_BLOCKS,
                block_tokens=self.block_tokens,
                session=req.session,
                priority=class_to_priority(req.priority),
                tenant=self.tenant_names[req.tenant] if self.tenant_names else "",
            )
        return req.route

    def _route(self, route: ModelRoute, req: SimRequest) -> bool:
        """Pick a replica and hand the request over; False when the limit leaves no candidate."""
        now = self.env.now
        if not route.replicas:
            return False  # scaled to zero: the request waits for a replica (activator)
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
        if route.flow is not None:
            route.flow.saturation.on_dispatch(now, req.row, decision.endpoint)
        route.by_name[decision.endpoint].submit(req)
        return True

    # -- completion ---------------------------------------------------------------------------------------
    def finish(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        """Final status of a request (from a replica or the gateway itself): log it, free the slot, move on."""
        self.in_flight -= 1
        self.completed += 1
        route = self.serving_route(req)
        self.log.finish(req, now, status, reason, route.version_code)
        if req.replica < 0:
            return
        replica = self.replicas[req.replica]
        if req.route is not None:
            route.router.on_complete(now, req.route, replica.name, now - req.arrival_s, status == STATUS_OK)
        if route.flow is not None:
            route.flow.saturation.on_complete(now, req.row, replica.name)
        breaker = route.primary.breaker
        if breaker is not None:  # the model's breaker counts every revision's outcomes
            breaker.record(now, status == STATUS_OK)
        if replica.state == "draining" and replica.in_flight == 0 and route.controller is not None:
            route.controller.retire(replica)
        if status == STATUS_OK and self.cache is not None and req.blocks is not None:
            self.cache.store(now, req.cache_key, None, 4 * req.output_tokens)
        if route.queued():
            self._pump(route)

    def rehome(self, old: ModelRoute, new: ModelRoute) -> int:
        """Move the requests still waiting at the gateway for revision `old` (retired: promoted away from or rolled
        back) to revision `new`, keeping their arrival times; what `old`'s replicas hold finishes there. Returns how
        many moved."""
        now = self.env.now
        waiting = list(old.queue)
        old.queue.clear()
        if old.flow is not None:
            while (item := old.flow.queue.pop(now)) is not None:
                waiting.append(old.held.pop(item.request_id))
        for req in waiting:
            req.version = new.revision
            self._admit(new, req)
        return len(waiting)

    def replica_ready(self, route: ModelRoute) -> None:
        """A replica joined the route: dispatch what waited for it (a canary's first one also opens its traffic)."""
        if route.rollout is not None:
            route.rollout.revision_ready(route)
        if route.queued():
            self._pump(route)

    def queued(self, model: int) -> int:
        return sum(route.queued() for route in self.routes[model].revisions)
