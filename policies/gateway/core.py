"""The gateway core: every decision of the request path, for both engines, as a pure state machine.

Fed events with `now` (request arrived, response cache looked up, attempt finished or failed, timer fired, metrics
scraped, replica added / draining / removed), it answers with actions (policies.gateway.types) that the engine carries
out in order: Dispatch, Respond, WakeAt, CacheWait, Activate, Record. The SimPy gateway (odhsim.sim.gateway) and the
asyncio gateway (runtime.gateway.core) are adapters around it and hold no decision of their own.

The request path, per model: canary split (which revision) -> response cache -> breaker (half-open probes; open:
the fallback model) -> Knative's activator (no ready replica: ask for one, hold the request up to
`activator_timeout_s`) -> admission (shed sheddable requests at saturation, computed from the replicas' scraped
metrics) -> the flow-control queue (priority, fairness, EDF, TTL, eviction) or a FIFO -> dispatch while a replica
has room (`max_in_flight_per_replica`) and, with llm-d's gate, the pool is not saturated -> the router picks among
the replicas (outlier-ejected ones marked unhealthy; all ejected: Envoy's panic routing over all of them) -> the
attempt -> completion hooks (router on_complete with session binding, saturation release, breaker, outlier
detector) -> on failure the retry policy (Envoy budget and back-off, or the seed's ladder: same model, then the
fallback, then give up).

Definitions, agreed once for both engines:
- success: the attempt ended with the replica's 2xx answer (outcome `ok`). A request fault (4xx caused by the
  request) completes the attempt without counting against the replica and is never retried; `abandoned` (the
  client left) and attempts excused by a gateway stall count for nothing. Anything else counts as a failure in
  the breaker and the outlier detector.
- latency fed to the router's on_complete (EWMA pickers): from the attempt's dispatch to its end.
- TTFT: from the request's arrival at the gateway to its first token; E2E: from arrival to the final answer
  (both measured by the engines, which own the clocks and the bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from policies.caching.response_cache import NullResponseCache, TieredResponseCache
from policies.decisions import DecisionRecorder
from policies.flowcontrol.priority import PRIORITY_CLASSES, class_to_priority
from policies.gateway.recording import (
    record_admission,
    record_arrival_fallback,
    record_fifo_pop,
    record_queue,
    record_route,
)
from policies.gateway.retrying import NO_REPLICAS, Retrying
from policies.gateway.route import RouteState
from policies.gateway.types import (
    ABANDONED,
    ABORTED,
    ACTIVATOR,
    BACKOFF,
    DONE,
    FAILED,
    GATE,
    OK,
    OUTLIER,
    REQUEST_FAULT,
    SHED,
    SWEEP,
    TIMEOUT,
    Action,
    Activate,
    CacheWait,
    ScrapedEndpoint,
    Ticket,
    WakeAt,
    new_dispatch,
    new_respond,
)
from policies.resilience.breaker import HALF_OPEN
from policies.routing.types import RouteRequest, new_route_request

ACTIVATOR_TIMEOUT_S = 300.0
"""How long Knative's activator holds a request for a revision with no ready replica: the revision's
timeoutSeconds, default 300 s (knative/serving pkg/apis/config/defaults.go DefaultRevisionTimeoutSeconds)."""
CACHE_SWEEP_S = 10.0

KeyFn = Callable[[RouteState, Ticket], "int | None"]


class GatewayCore(Retrying):
    """All models' routes (`models[i]` is model i's primary revision) and the response cache."""

    def __init__(
        self,
        models: list[RouteState],
        *,
        scrape_interval_s: float,
        block_tokens: int,
        cache: TieredResponseCache | NullResponseCache | None = None,
        cache_key: KeyFn | None = None,
        activator_timeout_s: float = ACTIVATOR_TIMEOUT_S,
    ) -> None:
        self.models = models
        self.scrape_interval_s = scrape_interval_s
        self.block_tokens = block_tokens
        self.cache = cache
        self.cache_key = cache_key
        self.activator_timeout_s = activator_timeout_s
        self.next_cache_sweep = 0.0
        self.recorder: DecisionRecorder | None = None  # decision tracing (policies.decisions); None: off, free

    def start(self, now: float) -> list[Action]:
        """Arm the outlier detectors' sweeps."""
        out: list[Action] = []
        for model in self.models:
            if model.outlier is not None:
                model.next_outlier_sweep = now + model.outlier.interval_s
                out.append(WakeAt(model.outlier.interval_s, OUTLIER, model))
        self.next_cache_sweep = now + CACHE_SWEEP_S
        return out

    # -- events ---------------------------------------------------------------------------------------------------
    def arrive(self, now: float, t: Ticket) -> list[Action]:
        """A request arrived: split, then the response cache (a CacheWait) or the rest of the path."""
        model = self.models[t.model]
        split = model.split
        route = model if split is None else model.revisions[split.choose(now)]
        t.route = route
        route.arrivals += 1
        route.last_arrival = now
        cache = self.cache
        if cache is not None and self.cache_key is not None:
            key = self.cache_key(route, t)
            if key is not None:
                t.cache_key = key
                found = cache.lookup(now, key)
                t.cache_hit = found.hit
                if found.hit:
                    t.cache_found = found
                return [CacheWait(t, found.latency_s)]
        out: list[Action] = []
        if model.breaker is None and route.flow is None and route.ready and not route.retired:
            # The common path, as _enter and _admit would take it: no breaker, no fallback needed (a replica is
            # ready), no flow control; dispatch at once unless a request waits ahead (see _admit).
            t.waiting = True
            if route.fifo or route.retries or not self._dispatch(now, route, t, out):
                route.fifo.append(t)
            return out
        self._enter(now, t, out)
        return out

    def cache_done(self, now: float, t: Ticket) -> list[Action]:
        """The cache lookup's latency is over: a hit is answered, a miss goes on."""
        out: list[Action] = []
        if t.cache_hit:
            self._respond(now, t, OK, "cache_hit", "", out)
        else:
            self._enter(now, t, out)
        return out

    def attempt_done(
        self, now: float, t: Ticket, outcome: str, detail: str = "", *, excused: bool = False, value: object = None,
        size_bytes: int = 0,
    ) -> list[Action]:  # fmt: skip
        """The attempt in progress ended: `outcome` is `ok`, `request-fault`, `aborted`, `abandoned` or a retry
        failure kind (connect-failure, reset, timeout, 5xx, gateway-error); `excused`: the gateway's own stall made
        it fail. A success's `value` and `size_bytes` fill the response cache."""
        route, slot = t.route, t.slot
        assert route is not None and slot is not None, "attempt_done for a ticket with no attempt in progress"
        t.slot = None
        counts = not excused and outcome != REQUEST_FAULT and outcome != ABANDONED
        ok = outcome == DONE
        primary = route.primary
        outlier = primary.outlier
        if counts and outlier is not None and slot.name in route.slots:
            outlier.record(now, slot.name, ok)
        slot.in_flight -= 1  # route.release(slot), inlined (once per request)
        if slot.draining and slot.in_flight == 0 and route.slots.get(slot.name) is slot:
            del route.slots[slot.name]
        rr = t.rr
        if rr is not None:
            route.router.on_complete(now, rr, slot.name, now - t.dispatched_at, ok or not counts)
        flow = route.flow
        if flow is not None:
            flow.saturation.on_complete(now, t.id, slot.name)
        if counts and primary.breaker is not None:
            primary.breaker.record(now, ok)
        if t.retrying:
            t.retrying = False
            route.retries_in_flight = max(0, route.retries_in_flight - 1)
        out: list[Action] = []
        if ok:
            cache = self.cache
            if cache is not None and t.cache_key is not None and route.model == t.model:  # not a fallback's answer
                cache.store(now, t.cache_key, value, size_bytes)
            self._respond(now, t, OK, "", "", out)
        elif outcome == REQUEST_FAULT:
            self._respond(now, t, FAILED, "request_fault", detail, out)
        elif outcome == ABANDONED:
            self._respond(now, t, FAILED, "client_gone", detail or "the client went away", out)
        elif outcome == ABORTED:
            self._respond(now, t, FAILED, "aborted", detail, out)
        else:
            self._failed(now, t, route, slot.name, outcome, detail, excused, out)
        if route.fifo or route.retries or route.held:
            self._pump(now, route, out)
        return out

    def timer(self, now: float, kind: str, target: object) -> list[Action]:
        """A WakeAt came due."""
        out: list[Action] = []
        if kind == SWEEP:
            assert isinstance(target, RouteState)
            if now >= target.sweep_at and target.flow is not None:
                target.sweep_at = float("inf")
                self._expire(now, target, out)
                self._schedule_sweep(now, target, out)
        elif kind == GATE:
            assert isinstance(target, RouteState)
            target.gate_pending = False
            self._pump(now, target, out)
        elif kind == ACTIVATOR:
            assert isinstance(target, Ticket)
            self._activator_timeout(now, target, out)
        elif kind == BACKOFF:
            assert isinstance(target, Ticket)
            if not target.done and target.route is not None:
                self._requeue(now, target.route, target, out)
        elif kind == OUTLIER:
            assert isinstance(target, RouteState)
            outlier = target.outlier
            if outlier is not None and now >= target.next_outlier_sweep:
                outlier.evaluate(now, [n for r in target.revisions for n in r.slots])
                target.next_outlier_sweep = now + outlier.interval_s
                out.append(WakeAt(outlier.interval_s, OUTLIER, target))
        else:
            raise ValueError(f"unknown timer kind {kind!r}")
        return out

    def tick(self, now: float) -> list[Action]:
        """Housekeeping for an engine that polls instead of scheduling: due TTLs and outlier sweeps, a dispatch try
        on every route, the response cache's expiry."""
        out: list[Action] = []
        for model in self.models:
            if model.outlier is not None and now >= model.next_outlier_sweep:
                out += self.timer(now, OUTLIER, model)
            for route in model.revisions:
                if route.flow is not None and route.flow.queue.next_expiry() <= now:
                    self._expire(now, route, out)
                if route.queued():
                    self._pump(now, route, out)
        if self.cache is not None and now >= self.next_cache_sweep:
            self.cache.sweep(now)
            self.next_cache_sweep = now + CACHE_SWEEP_S
        return out

    def scraped(self, now: float, route: RouteState) -> list[Action]:
        """New metrics for `route`'s replicas: a gated queue may dispatch now."""
        out: list[Action] = []
        if route.queued():
            self._pump(now, route, out)
        return out

    def endpoint_added(self, now: float, route: RouteState, name: str, source: ScrapedEndpoint) -> list[Action]:
        """A replica passed its readiness test: route to it; what waited for one is dispatched."""
        route.add(name, source)
        out: list[Action] = []
        if route.queued():
            self._pump(now, route, out)
        return out

    def endpoint_draining(self, route: RouteState, name: str) -> None:
        """No new requests for the replica; the attempts it holds still end through `attempt_done`."""
        route.drain(name)

    def endpoint_removed(self, route: RouteState, name: str) -> None:
        route.remove(name)

    def withdraw(self, now: float, t: Ticket, status: str, reason: str, detail: str) -> list[Action]:
        """The engine gives up on a request still waiting at the gateway (request timeout, client gone)."""
        out: list[Action] = []
        if not t.done and t.slot is None:
            if t.route is not None:
                t.route.unqueue(t)
            self._respond(now, t, status, reason, detail, out)
        return out

    def fail_queued(self, now: float, route: RouteState, status: str, reason: str, detail: str) -> list[Action]:
        """End every request waiting for `route` (its deployment was rejected; the gateway stops)."""
        out: list[Action] = []
        for t in route.take_waiting(now):
            self._respond(now, t, status, reason, detail, out)
        return out

    def rehome(self, now: float, old: RouteState, new: RouteState) -> tuple[int, list[Action]]:
        """Move the requests waiting for a retired revision to `new`, keeping their arrival times."""
        out: list[Action] = []
        waiting = old.take_waiting(now)
        for t in waiting:
            self._admit(now, new, t, out)
        return len(waiting), out

    # -- the path ---------------------------------------------------------------------------------------------------
    def _split(self, now: float, model: RouteState, t: Ticket) -> RouteState:
        split = model.split
        return model if split is None else model.revisions[split.choose(now)]

    def _allow(self, now: float, model: RouteState, t: Ticket) -> bool:
        """The model's breaker lets `t` through (a half-open breaker's probe is remembered on the ticket)."""
        breaker = model.breaker
        if breaker is None:
            return True
        half_open = breaker.state(now) == HALF_OPEN
        allowed = breaker.allow(now)
        if allowed and half_open:
            if t.probes is None:
                t.probes = []
            t.probes.append(model)
        return allowed

    def _enter(self, now: float, t: Ticket, out: list[Action]) -> None:
        """Breaker and fallback, then the chosen revision."""
        model = self.models[t.model]
        route = t.route
        assert route is not None
        if route.retired:  # promoted away from or rolled back while the response cache was looked up
            route = self._split(now, model, t)
        breaker_open = model.breaker is not None and not self._allow(now, model, t)
        unserved = not route.ready and (bool(route.rejection) or not route.scales)
        if (breaker_open or unserved) and model.fallback is not None:
            backup = model.fallback
            if not self._allow(now, backup, t):
                detail = f"model '{model.name}' is unavailable and its fallback '{backup.name}' has its breaker open"
                self._respond(now, t, FAILED, "breaker_open", detail, out)
                return
            route = self._split(now, backup, t)
            if self.recorder is not None:
                why = "breaker_open" if breaker_open else "unserved"
                record_arrival_fallback(self.recorder, now, t, model, route, why)
        elif breaker_open:
            self._respond(now, t, FAILED, "breaker_open", "circuit breaker open and no fallback", out)
            return
        self._admit(now, route, t, out)

    def _admit(self, now: float, route: RouteState, t: Ticket, out: list[Action]) -> None:
        """The activator when the revision has no ready replica, then admission and its queue, then dispatch."""
        if t.route is not None and t.route.model != route.model:
            t.rr = None  # another model: the router sees a request for it
        t.route = route
        if not route.ready:
            if route.rejection or not route.scales:  # nothing will ever come up for it
                reason = "model_rejected" if route.rejection else "no_replica"
                self._respond(now, t, FAILED, reason, route.rejection or NO_REPLICAS, out)
                return
            out.append(Activate(route))
            out.append(WakeAt(self.activator_timeout_s, ACTIVATOR, t))
        flow = route.flow
        if flow is None:
            t.waiting = True
            # A non-empty queue means its head found no replica with room and none has freed since (every freed
            # slot or new replica pumps): the newcomer waits behind it without another scan of the replicas.
            if route.fifo or route.retries or not self._dispatch(now, route, t, out):
                route.fifo.append(t)
            return
        states = route.states()
        saturation = flow.saturation.saturation(now, states)
        verdict = flow.admission.admit(now, class_to_priority(t.priority), saturation, states)
        rec = self.recorder
        if not verdict.admitted:
            if rec is not None:
                record_admission(rec, now, t, route, False, verdict.reason or "shed at admission", saturation)
            self._respond(now, t, SHED, "admission", verdict.reason or "shed at admission", out)
            return
        target = route.ttft_targets[t.priority] if route.ttft_targets else None
        item = flow.make_item(t.id, PRIORITY_CLASSES[t.priority], t.tenant, now, target)
        pushed = flow.queue.push(now, item)
        for evicted in pushed.evicted:
            victim = route.held.pop(evicted.request_id)
            victim.waiting = False
            if rec is not None:
                record_queue(rec, now, route, evicted, "evict")
            self._respond(now, victim, SHED, "evicted", "evicted from a full queue", out)
        if rec is not None:
            record_admission(rec, now, t, route, pushed.accepted, "" if pushed.accepted else "queue_full", saturation)
        if not pushed.accepted:
            self._respond(now, t, SHED, "queue_full", pushed.reason or "queue full", out)
            return
        route.held[t.id] = t
        t.waiting = True
        self._schedule_sweep(now, route, out)
        self._pump(now, route, out)

    def _schedule_sweep(self, now: float, route: RouteState, out: list[Action]) -> None:
        assert route.flow is not None
        due = route.flow.queue.next_expiry()
        if due < route.sweep_at:
            route.sweep_at = due
            out.append(WakeAt(max(0.0, due - now), SWEEP, route))

    def _expire(self, now: float, route: RouteState, out: list[Action]) -> None:
        assert route.flow is not None
        for item in route.flow.queue.expire(now):
            t = route.held.pop(item.request_id, None)
            if t is not None:
                t.waiting = False
                if self.recorder is not None:
                    record_queue(self.recorder, now, route, item, "expire")
                waited = now - item.enqueued_at
                self._respond(now, t, TIMEOUT, "queue_ttl", f"queued {waited:.1f} s > TTL", out)

    def _pump(self, now: float, route: RouteState, out: list[Action]) -> None:
        """Dispatch waiting requests (retries first) while a replica has room and, gated, the pool is not
        saturated; a gated queue tries again one scrape interval later."""
        flow = route.flow
        while True:
            if route.retries:
                if not self._dispatch(now, route, route.retries[0], out):
                    return
                route.retries.popleft()
            elif flow is not None:
                if not len(flow.queue) or not route.has_room():
                    return
                if flow.gate_dispatch_on_saturation and not flow.may_dispatch(
                    flow.saturation.saturation(now, route.states())
                ):
                    if not route.gate_pending:  # metrics change at the next scrape at the earliest
                        route.gate_pending = True
                        out.append(WakeAt(self.scrape_interval_s, GATE, route))
                    return
                item = flow.queue.pop(now)
                if item is None:
                    return
                if self.recorder is not None:
                    record_queue(self.recorder, now, route, item, "pop")
                self._dispatch(now, route, route.held.pop(item.request_id), out)
            elif route.fifo:
                if self.recorder is not None and route.has_room():  # (has_room: _dispatch will send it)
                    record_fifo_pop(self.recorder, now, route, route.fifo[0])
                if not self._dispatch(now, route, route.fifo[0], out):
                    return
                route.fifo.popleft()
            else:
                return

    def _route_request(self, route: RouteState, t: Ticket) -> RouteRequest:
        rr = t.rr
        if rr is None:
            cls = t.priority  # a class index (int) in both engines: one tuple read instead of the checked call
            priority = _PRIORITY_OF_INDEX[cls] if cls.__class__ is int and 0 <= cls < _N_CLASSES else None
            rr = t.rr = new_route_request(
                t.id, route.name, t.prompt_tokens, t.blocks if t.blocks is not None else _NO_BLOCKS,
                self.block_tokens, t.session, class_to_priority(cls) if priority is None else priority, t.tenant,
                t.adapter,
            )  # fmt: skip
        return rr

    def _dispatch(self, now: float, route: RouteState, t: Ticket, out: list[Action]) -> bool:
        """Pick a replica among those with room (a retry prefers the ones that have not failed it); False, and
        nothing done, when no replica has room."""
        limit = route.limit
        slots = route.ready if limit is None else [s for s in route.ready if s.in_flight < limit]
        if not slots:
            return False
        t.waiting = False
        if t.exclude:
            preferred = [s for s in slots if s.name not in t.exclude]
            slots = preferred or slots
        states = []  # (a loop, not a comprehension: for a handful of replicas, building one costs more than this)
        for s in slots:
            states.append(s.source.scraped_state())
        outlier = route.primary.outlier
        if outlier is not None:
            ejected = outlier.ejected(now)
            # Envoy's panic routing: when every host is ejected, balance over all of them rather than fail.
            if ejected and any(s.name not in ejected for s in states):
                states = [replace(s, healthy=False) if s.name in ejected else s for s in states]
        rr = self._route_request(route, t)
        rec = self.recorder
        if rec is not None and rec.wants(t.id):
            decision = record_route(rec, now, route, t, rr, states)
        else:
            decision = route.router.pick(now, rr, states)
        name = decision.endpoint
        if name is None:
            self._respond(now, t, FAILED, "no_endpoint", decision.reason or "no endpoint", out)
            return True
        route.router.on_dispatch(now, rr, name)
        if route.flow is not None:
            route.flow.saturation.on_dispatch(now, t.id, name)
        slot = route.slots[name]
        slot.in_flight += 1
        t.slot = slot
        t.dispatched_at = now
        t.attempt += 1
        if t.probes is not None and route.primary in t.probes:
            t.probes.remove(route.primary)  # it reached its model: the attempt's result is the probe's
        out.append(new_dispatch(t, name, t.attempt, route.name, route.model != t.model))
        return True

    # -- ends -------------------------------------------------------------------------------------------------------
    def _activator_timeout(self, now: float, t: Ticket, out: list[Action]) -> None:
        """A request the activator held never got a replica in time: it fails instead of waiting forever."""
        if t.done or t.attempt > 0 or not t.waiting:
            return
        if t.route is not None:
            t.route.unqueue(t)
        detail = f"activator request timeout: no ready replica within {self.activator_timeout_s:g} s"
        self._respond(now, t, FAILED, "activator_timeout", detail, out)

    def _respond(self, now: float, t: Ticket, status: str, reason: str, detail: str, out: list[Action]) -> None:
        t.done = True
        if t.retrying:
            t.retrying = False
            if t.route is not None:
                t.route.retries_in_flight = max(0, t.route.retries_in_flight - 1)
        if t.probes:  # a half-open probe that never reached its model counts as failed
            for model in t.probes:
                if model.breaker is not None:
                    model.breaker.record(now, False)
            t.probes = None
        out.append(new_respond(t, status, reason, detail))


_NO_BLOCKS = RouteRequest(0, "", 0).block_ids
_PRIORITY_OF_INDEX = tuple(class_to_priority(i) for i in range(len(PRIORITY_CLASSES)))
_N_CLASSES = len(PRIORITY_CLASSES)
