"""The SimPy gateway: an adapter around the gateway core (policies.gateway), holding no decision of its own.

It turns simulation events into core events (a request arrives, a replica finishes a request, a timer fires, a
replica joins or drains) and carries out the core's actions: hand a request to a replica, schedule a wake-up, poke a
revision's controller (the activator), write the request's row. The request path itself (canary split, response
cache, breaker and fallback, activator, admission, flow-control queue, gated dispatch, router, completion hooks,
retries, outlier ejection) is described in policies/gateway/core.py.

A model in a canary rollout has two revisions (its version and the canary), each a `ModelRoute` with its own
replicas, router, queue and controller; the model's rollout (odhsim.sim.rollout) moves the core's split between them.
"""

from __future__ import annotations

from typing import Any

import simpy

from odhsim.results.request_log import RequestLog
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.request import STATUS_FAILED, STATUS_OK, SimRequest
from policies.caching.key import response_key
from policies.caching.response_cache import TieredResponseCache
from policies.controlplane.metrics import ConcurrencyIntegral
from policies.decisions import DecisionRecorder, Transition
from policies.flowcontrol.config import FlowControl
from policies.gateway.core import ACTIVATOR_TIMEOUT_S, NO_REPLICAS, GatewayCore
from policies.gateway.recording import transition_records
from policies.gateway.route import RouteState
from policies.gateway.types import ABORTED, DONE, Activate, CacheWait, Dispatch, Record, Respond, Ticket, WakeAt
from policies.resilience.breaker import CircuitBreaker
from policies.routing.framework import Router

__all__ = ["ACTIVATOR_TIMEOUT_S", "NO_REPLICAS", "Gateway", "ModelRoute"]

_LOGGED = frozenset({"retry", "fallback", "alert"})
"""The core's Records that become rows of events.parquet (the reactions to a failed attempt)."""


class ModelRoute:
    """One revision of one model as the simulation sees it: its replicas and controller, and the core's state for
    it (`core`); the model-wide parts (breaker, fallback) live on the primary (revision 0)."""

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
        self.core = RouteState(-1, name, version, router, flow=flow, limit=limit, ttft_targets=ttft_targets)
        self.core.ref = self  # the core's route -> this adapter's, without a dict lookup per request
        for r in replicas:
            self.core.add(r.name, r)
        self._controller: Any = None
        self.primary: ModelRoute = self  # the model's first route (revision 0), which holds the model-wide parts
        self.revisions: list[ModelRoute] = [self]  # on the primary: every revision, by number
        self.rollout: Any = None  # the model's CanaryRollout (odhsim.sim.rollout), on every revision of it
        self.version_code = -1  # the version's code in the requests table
        # Requests held for this revision integrated over time (request-seconds), kept only when an autoscaler
        # reads it: Knative's KPA scales on concurrency averaged over time, not on a point sample at its tick.
        self.concurrency: ConcurrencyIntegral | None = None

    # -- what the cluster builder, the controller and the rollout set or read -------------------------------------
    @property
    def router(self) -> Router:
        return self.core.router

    @property
    def flow(self) -> FlowControl | None:
        return self.core.flow

    @property
    def limit(self) -> int | None:
        return self.core.limit

    @property
    def revision(self) -> int:
        return self.core.revision

    @revision.setter
    def revision(self, value: int) -> None:
        self.core.revision = value

    @property
    def fallback(self) -> ModelRoute | None:
        return self._fallback if self.core.fallback is not None else None

    @fallback.setter
    def fallback(self, route: ModelRoute | None) -> None:
        self._fallback = route
        self.core.fallback = None if route is None else route.core

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self.core.breaker

    @breaker.setter
    def breaker(self, breaker: CircuitBreaker | None) -> None:
        self.core.breaker = breaker

    @property
    def rejection(self) -> str:
        return self.core.rejection

    @rejection.setter
    def rejection(self, reason: str) -> None:
        self.core.rejection = reason

    @property
    def retired(self) -> bool:
        return self.core.retired

    @retired.setter
    def retired(self, value: bool) -> None:
        self.core.retired = value

    @property
    def controller(self) -> Any:
        return self._controller

    @controller.setter
    def controller(self, controller: Any) -> None:
        self._controller = controller  # the model's ModelController (set by the cluster builder)
        self.core.scales = self.autoscaled
        if self.autoscaled and self.concurrency is None:
            self.concurrency = ConcurrencyIntegral(controller.env.now)

    @property
    def autoscaled(self) -> bool:
        return self._controller is not None and self._controller.autoscaler is not None

    @property
    def arrivals(self) -> int:
        """Requests the split sent to this revision (what its autoscaler counts)."""
        return self.core.arrivals

    @property
    def last_arrival_s(self) -> float:
        return self.core.last_arrival

    def queued(self) -> int:
        return self.core.queued()

    def has_room(self) -> bool:
        return self.core.has_room()

    def add_replica(self, replica: ReplicaBase) -> None:
        self.replicas.append(replica)
        self.by_name[replica.name] = replica
        self.core.add(replica.name, replica)

    def remove_replica(self, replica: ReplicaBase) -> None:
        """Stop sending it requests (it drains); requests it holds still finish through the gateway."""
        self.replicas.remove(replica)
        del self.by_name[replica.name]
        self.core.drain(replica.name)


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
        self.cache = response_cache
        self.in_flight = 0
        self.arrivals = [0] * len(routes)
        self.completed = 0
        self.events: list[dict[str, Any]] | None = None  # events.parquet's rows, where retries and alerts go
        # (time, key, hit, row) per response-cache lookup when set (odhsim.explain looks for stampedes in it)
        self.cache_lookups: list[tuple[float, int, bool, int]] | None = None
        for mi, model in enumerate(routes):
            model.core.revisions = [rev.core for rev in model.revisions]
            for rev in model.revisions:
                rev.core.model = mi
                rev.core.primary = model.core
        self._counted: dict[int, ConcurrencyIntegral] = {}  # by row: the revision integral it was counted in
        self.core = GatewayCore(
            [m.core for m in routes],
            scrape_interval_s=scrape_interval_s,
            block_tokens=block_tokens,
            cache=response_cache,
            cache_key=self._cache_key if response_cache is not None else None,
        )
        self._run(self.core.start(env.now))

    # -- events into the core -----------------------------------------------------------------------------------
    def arrive(self, req: SimRequest) -> None:
        self.in_flight += 1
        self.arrivals[req.model] += 1
        tenant = self.tenant_names[req.tenant] if self.tenant_names else ""
        # every argument by position (session, output_tokens, adapter, ref): keywords cost a dict per request
        t = Ticket(req.row, req.model, req.priority, tenant, req.arrival_s, req.prompt_tokens, req.blocks,
                   req.session, req.output_tokens, None, req)  # fmt: skip
        req.ticket = t  # on the request rather than in a dict by row: one attribute store per request
        now = self.env._now
        actions = self.core.arrive(now, t)
        counted = t.route.ref.concurrency  # type: ignore[union-attr]  # the revision that took it (split, fallback)
        if counted is not None:  # held there until its answer (a later retry on the fallback is not followed)
            counted.change(now, 1)
            self._counted[req.row] = counted
        self._run(actions)

    def finish(self, req: SimRequest, now: float, status: str, reason: str, kind: str | None = None) -> None:
        """A replica (or its controller, on a drain timeout) is done with a request it was handed; `kind`: the
        attempt failed in a way the retry policy acts on (connect-failure, reset, timeout, 5xx, gateway-error)."""
        t: Ticket = req.ticket
        outcome = kind if kind is not None else DONE if status == STATUS_OK else ABORTED
        actions = self.core.attempt_done(now, t, outcome, reason, size_bytes=4 * req.output_tokens)
        replica = self.replicas[req.replica]
        if replica.state == "draining" and replica.in_flight == 0:
            controller = t.route.ref.controller  # type: ignore[union-attr]
            if controller is not None:
                controller.retire(replica)
        self._run(actions)

    def connection_lost(self, req: SimRequest, now: float, reason: str, kind: str = "reset") -> None:
        """The connection to the replica broke under `req` (its process or node died, the link was cut). Before
        the first token the attempt fails with `kind` and the retry policy may try again; after it the client
        already holds part of the stream, which no gateway retries (Envoy retries only before the response
        starts), so the request fails with `reason`."""
        if req.first_token_s == req.first_token_s:  # not NaN: the stream had begun
            self.finish(req, now, STATUS_FAILED, f"{reason} (mid-stream: not retried)")
        else:
            self.finish(req, now, STATUS_FAILED, reason, kind)

    def replica_ready(self, route: ModelRoute) -> None:
        """A replica joined the route (add_replica): dispatch what waited for it (a canary's first one also opens
        its traffic)."""
        if route.rollout is not None:
            route.rollout.revision_ready(route)
        self._run(self.core.scraped(self.env.now, route.core))

    def rehome(self, old: ModelRoute, new: ModelRoute) -> int:
        """Move the requests still waiting at the gateway for revision `old` (retired) to revision `new`."""
        moved, actions = self.core.rehome(self.env.now, old.core, new.core)
        self._run(actions)
        return moved

    def queued(self, model: int) -> int:
        return sum(route.queued() for route in self.routes[model].revisions)

    def record_decisions(self, recorder: DecisionRecorder) -> None:
        """Trace the gateway core's and every revision controller's decisions into `recorder` (outputs.decisions)."""
        self.core.recorder = recorder
        for model in self.routes:
            for rev in model.revisions:
                if rev.controller is not None:
                    rev.controller.core.recorder = recorder

    def transitions(self) -> list[Transition]:
        """The breakers' state changes and the outlier detectors' ejections so far, as decision records."""
        return transition_records(self.core.models)

    def serving_route(self, req: SimRequest) -> ModelRoute:
        """The revision route that holds `req` (of its model, or of the fallback it went to)."""
        return req.ticket.route.ref  # type: ignore[no-any-return]

    def _cache_key(self, route: RouteState, t: Ticket) -> int | None:
        if t.blocks is None:
            return None
        assert self.cache is not None
        sampling = (("max_tokens", t.output_tokens),)
        tenant = self.cache.key_tenant(t.tenant)
        return response_key(
            route.name, route.version, sampling, block_ids=t.blocks, prompt_tokens=t.prompt_tokens, tenant=tenant
        )

    # -- the core's actions -----------------------------------------------------------------------------------------
    def _run(self, actions: list[Any]) -> None:
        for a in actions:
            cls = a.__class__
            if cls is Dispatch:
                t = a.ticket
                t.slot.source.submit(t.ref)  # the slot the core picked (named a.endpoint) is this replica's
            elif cls is Respond:
                self._respond(a)
            elif cls is WakeAt:
                ev = self.env.timeout(a.after_s, a)
                ev.callbacks.append(self._on_timer)
            elif cls is CacheWait:
                ev = self.env.timeout(a.latency_s, a.ticket)
                ev.callbacks.append(self._after_lookup)
            elif cls is Activate:
                a.route.ref.controller.poke()
            elif cls is Record and a.kind in _LOGGED and self.events is not None:  # only after a failed attempt
                self.events.append({"time_s": self.env._now, "kind": a.kind, "model": a.model, "replica": "",
                                    "detail": a.detail})  # fmt: skip

    def _respond(self, a: Respond) -> None:
        t = a.ticket
        req: SimRequest = t.ref
        req.ticket = None
        if self._counted:
            counted = self._counted.pop(t.id, None)
            if counted is not None:
                counted.change(self.env.now, -1)
        self.in_flight -= 1
        self.completed += 1
        held = t.route  # the core's revision that holds it (t.fallback and route.revision, without the properties)
        assert held is not None
        req.fallback = held.model != t.model
        req.version = held.revision
        req.retries = t.attempt - 1 if t.attempt > 1 else 0
        req.attempts = t.attempt
        now = self.env._now
        if a.reason == "cache_hit":
            req.cache_hit = True
            req.first_token_s = now
        self.log.finish(req, now, a.status, a.detail, held.ref.version_code)

    def _on_timer(self, event: simpy.Event) -> None:
        a: WakeAt = event.value
        self._run(self.core.timer(self.env.now, a.kind, a.target))

    def _after_lookup(self, event: simpy.Event) -> None:
        t: Ticket = event.value
        if self.cache_lookups is not None:
            self.cache_lookups.append((self.env.now, t.cache_key, t.cache_hit, t.id))
        self._run(self.core.cache_done(self.env.now, t))
