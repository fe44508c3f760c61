"""The live gateway: per model the same policy objects the simulator builds (router, flow control, breaker, plus
outlier detection and retries), a dispatch loop, and forwarding to replicas over HTTP.

A request goes: breaker (open: the fallback model) -> the activator when no replica is ready -> admission and the
flow-control queue (or a plain FIFO) -> dispatch while a replica has room (`max_in_flight_per_replica`) and, with
llm-d's gate, while the pool is not saturated -> the router picks on scraped metrics -> one attempt over HTTP. A
connect error, reset, timeout or 5xx before the client got a byte is recorded in the breaker and the outlier
detector, reported to the controller, and retried per the retry policy (on another replica when there is one, or
on the fallback model). Every policy call takes `now` from the injected clock (time.monotonic by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

import httpx
import numpy as np

from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from policies.autoscaling.types import ScalingMetrics
from policies.caching.config import build_response_cache
from policies.caching.response_cache import NullResponseCache, TieredResponseCache
from policies.caching.tiers import SharedTier
from policies.controlplane.metrics import LoadSnapshot
from policies.flowcontrol.config import build_flow_control
from policies.flowcontrol.priority import class_to_priority
from policies.resilience.breaker import HALF_OPEN
from policies.resilience.config import build_breaker, build_outlier_detector, build_retry
from policies.routing.config import build_router
from runtime.gateway.auth import KeyStore
from runtime.gateway.forward import AttemptFailed, Buffered, Streaming, UpstreamCall, forward
from runtime.gateway.metrics import GatewayMetrics, breaker_value
from runtime.gateway.route import GatewayError, Job, ModelRoute, ttft_targets
from runtime.gateway.upstream import Upstream, forward_client, scrape_client
from runtime.loop_lag import LoopLagMonitor

log = logging.getLogger("odhsim.gateway")

ColdCallback = Callable[[str], None]
FailureCallback = Callable[[str, str, str], None]


class Attempt:
    """One dispatched try at one replica; `done` releases its slot exactly once and records the result."""

    __slots__ = ("_gateway", "finished", "job", "route", "started", "upstream")

    def __init__(self, gateway: Gateway, job: Job, route: ModelRoute, upstream: Upstream, started: float) -> None:
        self._gateway = gateway
        self.job = job
        self.route = route
        self.upstream = upstream
        self.started = started
        self.finished = False

    def done(self, ok: bool | None, failure: str | None = None, detail: str = "") -> None:
        """ok None: neither success nor failure of the replica (the client left); only the slot is released."""
        if self.finished:
            return
        self.finished = True
        self._gateway._attempt_done(self, ok, failure, detail)


class Gateway:
    """The gateway of `odhsim serve`: see the module doc and runtime/README.md (Gateway contract)."""

    def __init__(
        self,
        scenario: Scenario,
        streams: RngStreams,
        *,
        keys: KeyStore,
        shared_tier: SharedTier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = scenario
        self.live = scenario.live
        self.keys = keys
        self.clock = clock
        self.on_cold_request: ColdCallback | None = None
        self.on_replica_failure: FailureCallback | None = None
        self.replica_headers: dict[str, str] = {}
        """Sent on every request to a replica (forwards and scrapes): the run's replica secret, set by serve."""
        gw = scenario.gateway
        now = clock()
        targets = ttft_targets(scenario)
        self.routes: dict[str, ModelRoute] = {}
        for m in scenario.models:
            router = build_router(gw.router, streams.get(f"router.{m.name}"))
            flow = (
                None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{m.name}"))
            )
            breaker = outlier = retry = None
            if gw.resilience is not None:
                breaker = build_breaker(gw.resilience, streams.get(f"breaker.{m.name}"))
                outlier = build_outlier_detector(gw.resilience, streams.get(f"outlier.{m.name}"))
                retry = build_retry(gw.resilience, streams.get(f"retry.{m.name}"))
            self.routes[m.name] = ModelRoute(
                m, router, flow, breaker, outlier, retry, gw.max_in_flight_per_replica, targets, now
            )
        for m in scenario.models:
            if m.fallback is not None:
                self.routes[m.name].fallback = self.routes[m.fallback]
        self.cache: TieredResponseCache | NullResponseCache = build_response_cache(
            gw.response_cache, streams.get("response_cache")
        )
        if isinstance(self.cache, TieredResponseCache) and self.cache.shared is not None and shared_tier is not None:
            self.cache.shared = shared_tier  # the scenario asked for a shared tier: the runtime's is Redis
        self.shared_tier = shared_tier
        self.metrics = GatewayMetrics(self._gauges, self._shared_tier_in_use)
        self.loop_monitor = LoopLagMonitor(observe=self.metrics.observe_loop_lag)
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._scraper: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._next_cache_sweep = now
        from runtime.gateway.app import create_app  # the app module imports this one

        self.app = create_app(self)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the HTTP clients, the scrapers and the housekeeping tick (inside the serving event loop)."""
        if self._started:
            return
        self._started = True
        self._closing = False
        self._client = forward_client(self.live.request_timeout_s, self.replica_headers)
        self._scraper = scrape_client(self.live.scrape_interval_s, self.replica_headers)
        for route in self.routes.values():
            for u in route.upstreams.values():
                self._start_scraping(u)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="gateway-tick")
        self.loop_monitor.start()

    async def aclose(self) -> None:
        """Stop background work, end queued requests (503), close the clients."""
        if not self._started:
            return
        self._closing = True
        self._started = False
        await self.loop_monitor.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for route in self.routes.values():
            for u in route.upstreams.values():
                await u.stop()
            self._fail_queued(route, GatewayError(503, "failed", "shutting_down", "the gateway is shutting down"))
        for client in (self._client, self._scraper):
            if client is not None:
                await client.aclose()
        self._client = self._scraper = None

    def _start_scraping(self, u: Upstream) -> None:
        assert self._scraper is not None
        loop = asyncio.get_running_loop()
        u.task = loop.create_task(
            u.scrape_forever(self._scraper, self.live.scrape_interval_s, self.clock, self._on_scraped),
            name=f"scrape-{u.model}-{u.name}",
        )

    def _on_scraped(self, u: Upstream) -> None:
        route = self.routes.get(u.model)
        if route is not None and route.queued():
            self._pump(route)

    async def _tick_forever(self) -> None:
        """Housekeeping: queue TTLs, outlier sweeps, cache expiry, and a dispatch retry for gated queues."""
        tick = min(0.1, self.live.scrape_interval_s)
        while True:
            await asyncio.sleep(tick)
            try:
                self.tick(self.clock())
            except Exception:  # never let housekeeping die silently
                log.exception("gateway tick failed")

    def tick(self, now: float) -> None:
        for route in self.routes.values():
            if route.flow is not None and route.flow.queue.next_expiry() <= now:
                for item in route.flow.queue.expire(now):
                    job = route.held.pop(item.request_id, None)
                    if job is not None:
                        waited = now - item.enqueued_at
                        self._fail_job(
                            job, GatewayError(503, "timeout", "queue_ttl", f"queued {waited:.2f} s, over the TTL")
                        )
            if route.outlier is not None and now >= route.next_outlier_sweep:
                route.outlier.evaluate(now, list(route.upstreams))
                route.next_outlier_sweep = now + route.outlier.interval_s
            if route.queued():
                self._pump(route)
        if now >= self._next_cache_sweep:
            self.cache.sweep(now)
            self._next_cache_sweep = now + 10.0

    # -- the controller's interface ----------------------------------------------------------------------------
    def add_replica(self, model: str, name: str, base_url: str) -> None:
        """Start scraping and routing to a replica that passed its readiness test."""
        route = self._route(model)
        old = route.upstreams.get(name)
        if old is not None and old.task is not None:
            old.task.cancel()
        u = Upstream(model, name, base_url, self.clock())
        route.upstreams[name] = u
        if route.outlier is not None:
            route.outlier.set_hosts(list(route.upstreams))
        if self._started:
            self._start_scraping(u)
            self._pump(route)

    def drain_replica(self, model: str, name: str) -> None:
        """No new requests; the requests it holds finish."""
        u = self._route(model).upstreams.get(name)
        if u is not None:
            u.draining = True

    def remove_replica(self, model: str, name: str) -> None:
        """Forget it (after its drain, or after its process died); attempts still running end on their own."""
        route = self._route(model)
        u = route.upstreams.pop(name, None)
        if u is None:
            return
        u.draining = True
        if u.task is not None:
            u.task.cancel()
            u.task = None
        if route.outlier is not None:
            route.outlier.set_hosts(list(route.upstreams))

    def reject_model(self, model: str, reason: str) -> None:
        """The controller refused to deploy the model: its requests go to the fallback or fail with `reason`."""
        route = self._route(model)
        route.rejection = reason
        self._fail_queued(route, GatewayError(503, "failed", "model_rejected", reason))

    def in_flight(self, model: str, name: str) -> int:
        u = self._route(model).upstreams.get(name)
        return 0 if u is None else u.in_flight

    def replicas(self, model: str) -> list[str]:
        return list(self._route(model).upstreams)

    def load_snapshot(self, model: str, now: float, ready: int, pending: int) -> LoadSnapshot:
        """The model's raw load counters for the controller core (policies.controlplane), which turns successive
        snapshots into the autoscaler's ScalingMetrics (rates over the time that elapsed)."""
        route = self._route(model)
        ups = route.ready
        waiting = sum(u.metrics.waiting for u in ups)
        return LoadSnapshot(
            now=now,
            arrivals=route.arrivals,
            in_flight=float(route.in_flight() + route.queued()),
            queued=route.queued() + waiting,
            ready=ready,
            pending=pending,
            waiting=float(waiting),
            kv_usage_sum=sum(min(1.0, max(0.0, u.metrics.kv_usage)) for u in ups),
            serving=len(ups),
            last_arrival_s=route.last_arrival,
        )

    def scaling_metrics(self, model: str, now: float, ready: int, pending: int) -> ScalingMetrics:
        """What the model's autoscaler observes now; arrivals_per_s counts arrivals since the previous call."""
        route = self._route(model)
        ups = route.ready
        dt = now - route.rate_since
        rate = (route.arrivals - route.rate_seen) / dt if dt > 0 else 0.0
        route.rate_since, route.rate_seen = now, route.arrivals
        waiting = sum(u.metrics.waiting for u in ups)
        kv = sum(u.metrics.kv_usage for u in ups) / len(ups) if ups else 0.0
        last = route.last_arrival
        return ScalingMetrics(
            now=now,
            ready_replicas=ready,
            pending_replicas=pending,
            in_flight=float(route.in_flight() + route.queued()),
            arrivals_per_s=max(0.0, rate),
            queue_len=route.queued() + waiting,
            kv_usage=min(1.0, max(0.0, kv)),
            waiting_per_replica=waiting / len(ups) if ups else 0.0,
            seconds_since_last_request=max(0.0, now - last) if last == last else math.inf,
        )

    def queued(self, model: str) -> int:
        return self._route(model).queued()

    def ready(self) -> bool:
        """Every model has a ready replica or may scale from zero (the activator holds its requests); a model whose
        deployment was rejected never will, so it does not hold readiness back."""
        return all(r.ready or r.can_scale_from_zero or r.rejection is not None for r in self.routes.values())

    def model_ready(self, model: str) -> bool:
        return bool(self._route(model).ready)

    def _route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise KeyError(f"unknown model {model!r}; known: {', '.join(self.routes)}")
        return route

    # -- a request's way in ------------------------------------------------------------------------------------
    def new_job(
        self, request_id: str, model: str, priority_class: str, tenant: str, prompt_tokens: int, blocks: np.ndarray
    ) -> Job:
        """Register an arrival (counted for the autoscaler, cache hits included)."""
        now = self.clock()
        route = self._route(model)
        route.arrivals += 1
        route.last_arrival = now
        return Job(next(self._ids), request_id, model, priority_class, tenant, prompt_tokens, blocks, now)

    def _enter(self, job: Job) -> ModelRoute:
        """Breaker and fallback; the route the job queues at (raises when it cannot be served)."""
        now = self.clock()
        route = self._route(job.model)
        breaker_open = not self._allow(route, job, now)
        unserved = not route.ready and not route.will_have_replicas
        if (breaker_open or unserved) and route.fallback is not None:
            backup = route.fallback
            if not self._allow(backup, job, now):
                raise GatewayError(
                    503,
                    "failed",
                    "breaker_open",
                    f"model '{route.name}' is unavailable and its fallback '{backup.name}' has its breaker open",
                )
            route = backup
        elif breaker_open:
            raise GatewayError(503, "failed", "breaker_open", f"circuit breaker open for model '{route.name}'")
        if not route.ready:
            if route.rejection is not None:
                raise GatewayError(503, "failed", "model_rejected", route.rejection)
            if not route.will_have_replicas:
                raise GatewayError(503, "failed", "no_replica", f"model '{route.name}' has no replicas and no fallback")
            self._cold(route)
        return route

    def _allow(self, route: ModelRoute, job: Job, now: float) -> bool:
        """The route's breaker lets the job through (a half-open breaker's probe is remembered on the job)."""
        if route.breaker is None:
            return True
        half_open = route.breaker.state(now) == HALF_OPEN
        allowed = route.breaker.allow(now)
        if allowed and half_open:
            job.probes.append(route)
        return allowed

    def _cold(self, route: ModelRoute) -> None:
        """The activator: hold the request (it waits in the queue) and ask the controller for a replica."""
        if self.on_cold_request is not None:
            try:
                self.on_cold_request(route.name)
            except Exception:
                log.exception("on_cold_request(%s) failed", route.name)

    def _enqueue(self, route: ModelRoute, job: Job) -> None:
        now = self.clock()
        job.route = route
        flow = route.flow
        if job.retrying:
            route.retries.append(job)
            return
        if flow is None:
            route.fifo.append(job)
            return
        sat = flow.saturation.saturation(now, route.states(now))
        verdict = flow.admission.admit(now, class_to_priority(job.priority_class), sat)
        if not verdict.admitted:
            raise GatewayError(429, "shed", "admission", verdict.reason or "shed at admission")
        item = flow.make_item(job.rid, job.priority_class, job.tenant, now, route.ttft_targets.get(job.priority_class))
        pushed = flow.queue.push(now, item)
        for evicted in pushed.evicted:
            victim = route.held.pop(evicted.request_id, None)
            if victim is not None:
                self._fail_job(victim, GatewayError(429, "shed", "evicted", "evicted from a full queue"))
        if not pushed.accepted:
            raise GatewayError(429, "shed", "queue_full", pushed.reason or "queue full")
        route.held[job.rid] = job

    async def acquire(self, job: Job) -> Upstream:
        """Wait until the job is dispatched to a replica (its slot there is then held); raises GatewayError."""
        if self._closing or not self._started:
            raise GatewayError(503, "failed", "shutting_down", "the gateway is not serving")
        route = job.route if job.retrying and job.route is not None else self._enter(job)
        loop = asyncio.get_running_loop()
        job.slot = loop.create_future()
        self._enqueue(route, job)
        self._pump(route)
        try:
            await asyncio.wait({job.slot}, timeout=self.live.request_timeout_s)
        finally:
            if not job.slot.done():  # timed out, or the client went away (cancelled)
                self._withdraw(job)
        if job.slot.cancelled():
            waited = self.clock() - job.arrival
            raise GatewayError(503, "timeout", "request_timeout", f"no replica took the request within {waited:.1f} s")
        return job.slot.result()  # raises the GatewayError set by the pump or the TTL sweep

    def _withdraw(self, job: Job) -> None:
        """Take a job that no longer waits out of its queue."""
        route = job.route
        assert job.slot is not None
        job.slot.cancel()
        if route is None:
            return
        if route.held.pop(job.rid, None) is not None and route.flow is not None:
            route.flow.queue.remove(job.rid)
        with contextlib.suppress(ValueError):
            route.fifo.remove(job)
        with contextlib.suppress(ValueError):
            route.retries.remove(job)

    def _fail_job(self, job: Job, err: GatewayError) -> None:
        if job.slot is not None and not job.slot.done():
            job.slot.set_exception(err)

    def _fail_queued(self, route: ModelRoute, err: GatewayError) -> None:
        jobs = [*route.fifo, *route.held.values(), *route.retries]
        route.fifo.clear()
        route.retries.clear()
        if route.flow is not None:
            for rid in list(route.held):
                route.flow.queue.remove(rid)
        route.held.clear()
        for job in jobs:
            self._fail_job(job, err)

    # -- dispatch ----------------------------------------------------------------------------------------------
    def _pump(self, route: ModelRoute) -> None:
        """Dispatch waiting jobs while a replica has room (and, gated, the pool is not saturated)."""
        if route.pumping:
            return
        route.pumping = True
        try:
            now = self.clock()
            flow = route.flow
            while route.has_room():
                if route.retries:
                    job = route.retries.popleft()
                elif flow is not None:
                    if not len(flow.queue):
                        break
                    if flow.gate_dispatch_on_saturation and not flow.may_dispatch(
                        flow.saturation.saturation(now, route.states(now))
                    ):
                        break  # the next scrape (or tick) pumps again
                    item = flow.queue.pop(now)
                    if item is None:
                        break
                    popped = route.held.pop(item.request_id, None)
                    if popped is None:
                        continue
                    job = popped
                elif route.fifo:
                    job = route.fifo.popleft()
                else:
                    break
                if job.slot is None or job.slot.done():
                    continue
                self._dispatch(route, job, now)
        finally:
            route.pumping = False

    def _dispatch(self, route: ModelRoute, job: Job, now: float) -> None:
        assert job.slot is not None
        room = [u for u in route.ready if route.limit is None or u.in_flight < route.limit]
        preferred = [u for u in room if u.name not in job.exclude] or room
        ejected = route.ejected(now)
        states = [u.endpoint_state(u.name not in ejected) for u in preferred]
        if not any(s.healthy for s in states):
            # Envoy's panic routing: when no host is healthy, load-balance over all of them rather than fail.
            states = [replace(s, healthy=True) for s in states]
        rr = job.route_request(route)
        decision = route.router.pick(now, rr, states)
        if decision.endpoint is None:
            self._fail_job(job, GatewayError(503, "failed", "no_endpoint", decision.reason or "no endpoint"))
            return
        upstream = route.upstreams[decision.endpoint]
        route.router.on_dispatch(now, rr, upstream.name)
        if route.flow is not None:
            route.flow.saturation.on_dispatch(now, job.rid, upstream.name)
        upstream.in_flight += 1
        job.slot.set_result(upstream)

    def _attempt_done(self, attempt: Attempt, ok: bool | None, failure: str | None, detail: str) -> None:
        now = self.clock()
        route, u, job = attempt.route, attempt.upstream, attempt.job
        u.in_flight -= 1
        route.router.on_complete(now, job.route_request(route), u.name, now - attempt.started, ok is not False)
        if route.flow is not None:
            route.flow.saturation.on_complete(now, job.rid, u.name)
        if ok is not None and route.breaker is not None:
            route.breaker.record(now, ok)
        if ok is not None and route.outlier is not None and u.name in route.upstreams:
            route.outlier.record(now, u.name, ok)
        if ok is False:
            self.metrics.upstream_failures.labels(route.name, failure or "unknown").inc()
            if self.on_replica_failure is not None:
                try:
                    self.on_replica_failure(route.name, u.name, f"{failure}: {detail}" if detail else str(failure))
                except Exception:
                    log.exception("on_replica_failure(%s, %s) failed", route.name, u.name)
        if route.queued():
            self._pump(route)

    def end_job(self, job: Job) -> None:
        """A request's final answer was given: a half-open probe that never reached its model counts as failed,
        so the breaker cannot stay half-open waiting for a result that will never come."""
        for probe in job.probes:
            if probe.name not in job.attempted and probe.breaker is not None:
                probe.breaker.record(self.clock(), False)
        job.probes.clear()

    # -- forwarding --------------------------------------------------------------------------------------------
    async def serve(self, job: Job, call: UpstreamCall) -> Buffered | Streaming:
        """Attempts until one answers (below 500) or the retry policy gives up (GatewayError 502)."""
        excused = 0
        try:
            while True:
                upstream = await self.acquire(job)
                route = job.route
                assert route is not None
                job.attempted.add(route.name)
                job.attempts += 1
                attempt = Attempt(self, job, route, upstream, self.clock())
                try:
                    assert self._client is not None
                    result = await forward(self._client, attempt, call, self.live.request_timeout_s)
                    if isinstance(result, Buffered):
                        attempt.done(True)  # a stream's end is recorded by whoever relays it
                    return result
                except AttemptFailed as failed:
                    stalled = self._gateway_stalled(attempt, failed)
                    # The gateway's own stall made it late, not the replica: no breaker, outlier or failure record.
                    attempt.done(None if stalled else False, failed.kind, failed.detail)
                    self._end_retry(job)
                    if stalled:
                        self.metrics.attempts_excused.labels(route.name, failed.kind).inc()
                        if excused == 0:  # one free retry: the replica may well have answered in time
                            excused += 1
                            continue
                    backoff = self._next_step(job, route, upstream, failed)
                except BaseException:
                    attempt.done(None)  # the client went away or the gateway stops: not the replica's doing
                    raise
                if backoff > 0:
                    await asyncio.sleep(backoff)
        finally:
            self._end_retry(job)

    def _gateway_stalled(self, attempt: Attempt, failed: AttemptFailed) -> bool:
        """The attempt timed out or failed to connect while this gateway's event loop lagged more than
        `live.loop_stall_s`: its timers fired late, so the failure says nothing about the replica."""
        if failed.kind not in ("timeout", "connect-failure"):
            return False
        return self.loop_monitor.lag_within(self.clock() - attempt.started) > self.live.loop_stall_s

    def _end_retry(self, job: Job) -> None:
        """The retry this job was counted as (in the retry budget) is over."""
        if job.retrying:
            job.retrying = False
            if job.route is not None:
                job.route.retries_in_flight = max(0, job.route.retries_in_flight - 1)

    def _next_step(self, job: Job, route: ModelRoute, upstream: Upstream, failed: AttemptFailed) -> float:
        """After a failed attempt: retry (same model, another replica preferred) or fall back, returning the
        back-off to wait; raises GatewayError(502) when the policy gives up."""
        job.failures += 1
        job.exclude.add(upstream.name)
        policy = route.retry
        if policy is None:
            raise GatewayError(502, "failed", "upstream_failed", f"replica {upstream.name} failed ({failed.kind})")
        decision = policy.decide(
            job.failures,
            failed.kind,
            route.fallback is not None,
            route.in_flight(),
            route.queued(),
            route.retries_in_flight,
        )
        if decision.action == "fail" or (decision.action == "fallback" and route.fallback is None):
            raise GatewayError(
                502, "failed", "upstream_failed", f"replica {upstream.name} failed ({failed.kind}); {decision.reason}"
            )
        target = route.fallback if decision.action == "fallback" and route.fallback is not None else route
        if target is not route:
            job.exclude.clear()
        job.route = target
        job.retrying = True
        target.retries_in_flight += 1
        self.metrics.retries.labels(route.name).inc()
        return decision.backoff_s

    # -- gauges --------------------------------------------------------------------------------------------------
    def _shared_tier_in_use(self) -> SharedTier | None:
        return self.cache.shared if isinstance(self.cache, TieredResponseCache) else None

    def _gauges(self) -> dict[str, dict[str, float]]:
        now = self.clock()
        out: dict[str, dict[str, float]] = {}
        for name, r in self.routes.items():
            out[name] = {
                "odhsim_gateway_queue_length": float(r.queued()),
                "odhsim_gateway_breaker_open": breaker_value(r.breaker_state(now)),
                "odhsim_gateway_replicas_ready": float(len(r.ready)),
                "odhsim_gateway_replicas_draining": float(len(r.upstreams) - len(r.ready)),
                "odhsim_gateway_replicas_ejected": float(len(r.ejected(now) & set(r.upstreams))),
                "odhsim_gateway_in_flight": float(r.in_flight()),
            }
        return out


def build_gateway(
    scenario: Scenario,
    *,
    keys: KeyStore | None = None,
    clock: Callable[[], float] = time.monotonic,
    shared_tier: SharedTier | None = None,
) -> Gateway:
    """The standard construction: RngStreams(scenario.seed), the scenario's keys (file or $ODHSIM_API_KEYS) unless
    given, and the Redis tier from `live.redis_url` unless one is given."""
    from runtime.gateway.auth import load_keys
    from runtime.gateway.shared_tier import scenario_prefix, shared_tier_from_url

    if keys is None:
        keys = load_keys(scenario.live.api_keys_file, scenario.base_dir)
    if shared_tier is None:
        prefix = scenario.live.redis_prefix or scenario_prefix(scenario.name)
        shared_tier = shared_tier_from_url(scenario.live.redis_url, prefix=prefix)
    return Gateway(scenario, RngStreams(scenario.seed), keys=keys, shared_tier=shared_tier, clock=clock)
