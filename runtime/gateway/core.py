"""The live gateway: an asyncio adapter around the gateway core (policies.gateway), holding no decision of its own.

It turns what happens on the event loop into core events (a request arrived, an attempt over HTTP ended or failed
with a kind, a scrape landed, a timer or the housekeeping tick fired, a replica joined, drains or left) and carries
out the core's actions: hand a request's handler the replica to send it to (Dispatch), end it with a status and a
reason (Respond), schedule a wake-up (WakeAt), ask the controller for a replica (Activate), count (Record). The
request path itself (response cache, breaker and fallback, activator, admission, flow-control queue, gated
dispatch, router with session affinity, completion hooks, retries, outlier ejection and panic routing) is described
in policies/gateway/core.py. The I/O lives beside this module, one job each: HTTP forwarding (forward.py, one
`Attempt` of attempt.py at a time), the relay of streams (relay.py), the scrape loops (scrape.py), the wake-up heap
(timers.py), the load read for the controller and /metrics (load.py), the Redis tier behind the response cache
(shared_tier.py), the HTTP surface (app.py). Every core call takes `now` from the injected clock (time.monotonic
by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from policies.autoscaling.types import ScalingMetrics
from policies.caching.config import build_response_cache
from policies.caching.response_cache import NullResponseCache, TieredResponseCache
from policies.caching.tiers import SharedTier
from policies.controlplane.metrics import LoadSnapshot
from policies.decisions import DecisionRecorder, Transition
from policies.gateway.core import GatewayCore
from policies.gateway.recording import transition_records
from policies.gateway.route import RouteState
from policies.gateway.types import (
    ABANDONED,
    DONE,
    FAILED,
    REQUEST_FAULT,
    TIMEOUT,
    Activate,
    CacheWait,
    Dispatch,
    Record,
    Respond,
    Ticket,
    WakeAt,
)
from runtime.gateway.attempt import Attempt
from runtime.gateway.auth import KeyStore
from runtime.gateway.forward import AttemptFailed, Buffered, Streaming, UpstreamCall, forward
from runtime.gateway.limits import BLOCK_TOKENS
from runtime.gateway.load import gauges_of, scaling_metrics_of, snapshot_of
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.route import CacheKeyFn, GatewayError, Job, ModelRoute, build_routes, new_ticket, session_id
from runtime.gateway.scrape import Scrapers
from runtime.gateway.timers import TimerHeap
from runtime.gateway.upstream import Upstream, forward_client
from runtime.loop_lag import LoopLagMonitor

log = logging.getLogger("odhsim.gateway")

ColdCallback = Callable[[str], None]
FailureCallback = Callable[[str, str, str], None]
ForwardFn = Callable[[httpx.AsyncClient, Attempt, UpstreamCall, float], Awaitable[Buffered | Streaming]]
SHUTTING_DOWN = "the gateway is shutting down"
__all__ = ["Attempt", "Gateway", "build_gateway"]  # Attempt: imported from here by the equivalence test


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
        forward_fn: ForwardFn = forward,
    ) -> None:
        self.scenario = scenario
        self.live = scenario.live
        self.keys = keys
        self.clock = clock
        self._forward = forward_fn
        self.on_cold_request: ColdCallback | None = None
        self.on_replica_failure: FailureCallback | None = None
        self.on_record: Callable[[Record], None] | None = None
        """Sees each of the core's Records (serve logs the reactions to failures as events: retry, fallback,
        alert)."""
        self.replica_headers: dict[str, str] = {}
        """Sent on every request to a replica (forwards and scrapes): the run's replica secret, set by serve."""
        gw = scenario.gateway
        self.routes: dict[str, ModelRoute] = build_routes(scenario, streams, clock())
        self._by_core: dict[RouteState, ModelRoute] = {r.core: r for r in self.routes.values()}
        self.cache: TieredResponseCache | NullResponseCache = build_response_cache(
            gw.response_cache, streams.get("response_cache")
        )
        if isinstance(self.cache, TieredResponseCache) and self.cache.shared is not None and shared_tier is not None:
            self.cache.shared = shared_tier  # the scenario asked for a shared tier: the runtime's is Redis
        self.shared_tier = shared_tier
        self.core = GatewayCore(
            [r.core for r in self.routes.values()],
            scrape_interval_s=self.live.scrape_interval_s,
            block_tokens=BLOCK_TOKENS,
            cache=self.cache,
            cache_key=_cache_key,
        )
        self.metrics = GatewayMetrics(lambda: gauges_of(self.routes, self.clock()), self._shared_tier_in_use)
        self.loop_monitor = LoopLagMonitor(observe=self.metrics.observe_loop_lag)
        self.jobs: dict[int, Job] = {}  # requests not answered yet, by ticket id
        self.client_ids: dict[int, str] | None = None
        """Ticket id -> the client's request id (`x-request-id`), kept only while decisions are recorded: the
        cores number a request by its ticket, serve writes decisions.parquet with the client's id when it can."""
        self._ids = itertools.count(1)
        self.timers = TimerHeap(clock, self._fire_due)  # the core's WakeAt
        self.scrapers = Scrapers(self.live.scrape_interval_s, clock, self._on_scraped)
        self._client: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
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
        self.scrapers.start(self.replica_headers, self._upstreams())
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="gateway-tick")
        self.loop_monitor.start()
        self._run(self.core.start(self.clock()))

    async def aclose(self) -> None:
        """Stop background work, end the requests still waiting at the gateway (503), close the clients."""
        if not self._started:
            return
        self._closing = True
        self._started = False
        await self.loop_monitor.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.scrapers.aclose(self._upstreams())
        now = self.clock()
        for job in list(self.jobs.values()):  # queued, in a retry's back-off, or held by the activator
            if job.ticket.slot is None:
                self._run(self.core.withdraw(now, job.ticket, FAILED, "shutting_down", SHUTTING_DOWN))
        self.timers.clear()
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    def _upstreams(self) -> list[Upstream]:
        return [u for route in self.routes.values() for u in route.upstreams.values()]

    def _on_scraped(self, u: Upstream) -> None:
        route = self.routes.get(u.model)
        if route is not None:
            self._run(self.core.scraped(self.clock(), route.core))

    async def _tick_forever(self) -> None:
        """Housekeeping: due timers, queue TTLs, outlier sweeps, cache expiry, a dispatch try for gated queues."""
        tick = min(0.1, self.live.scrape_interval_s)
        while True:
            await asyncio.sleep(tick)
            try:
                self.tick(self.clock())
            except Exception:  # never let housekeeping die silently
                log.exception("gateway tick failed")

    def tick(self, now: float) -> None:
        """The core's timers that are due, then its housekeeping (an engine that polls)."""
        self.fire_timers(now)
        self._run(self.core.tick(now))

    def fire_timers(self, now: float) -> None:
        """Run the core's wake-ups due by `now`, in the order they are due, each at its due time (as the simulator
        does; a wake-up it schedules is due relative to that time, so a late tick does not stretch a sweep
        interval)."""
        for due, kind, target in self.timers.pop_due(now):
            self._run(self.core.timer(due, kind, target), due)

    # -- the controller's interface ----------------------------------------------------------------------------
    def add_replica(self, model: str, name: str, base_url: str) -> None:
        """Start scraping and routing to a replica that passed its readiness test."""
        route = self._route(model)
        old = route.upstreams.get(name)
        if old is not None:
            self.scrapers.forget(old)
        u = Upstream(model, name, base_url, self.clock())
        route.upstreams[name] = u
        if self._started:
            self.scrapers.watch(u)
        self._run(self.core.endpoint_added(self.clock(), route.core, name, u))

    def drain_replica(self, model: str, name: str) -> None:
        """No new requests; the requests it holds finish."""
        self.core.endpoint_draining(self._route(model).core, name)

    def remove_replica(self, model: str, name: str) -> None:
        """Forget it (after its drain, or after its process died); attempts still running end on their own."""
        route = self._route(model)
        u = route.upstreams.pop(name, None)
        if u is None:
            return
        self.scrapers.forget(u)
        self.core.endpoint_removed(route.core, name)

    def reject_model(self, model: str, reason: str) -> None:
        """The controller refused to deploy the model: its requests go to the fallback or fail with `reason`."""
        route = self._route(model)
        route.core.rejection = reason
        self._run(self.core.fail_queued(self.clock(), route.core, FAILED, "model_rejected", reason))

    def in_flight(self, model: str, name: str) -> int:
        return self._route(model).replica_in_flight(name)

    def replicas(self, model: str) -> list[str]:
        return list(self._route(model).upstreams)

    def load_snapshot(self, model: str, now: float, ready: int, pending: int) -> LoadSnapshot:
        """The model's raw load counters for the controller core (runtime.gateway.load)."""
        return snapshot_of(self._route(model), now, ready, pending)

    def scaling_metrics(self, model: str, now: float, ready: int, pending: int) -> ScalingMetrics:
        """What the model's autoscaler observes now; arrivals_per_s counts arrivals since the previous call."""
        return scaling_metrics_of(self._route(model), now, ready, pending)

    def queued(self, model: str) -> int:
        return self._route(model).queued()

    def ready(self) -> bool:
        """Every model has a ready replica or may scale from zero (the activator holds its requests); a model whose
        deployment was rejected never will, so it does not hold readiness back."""
        return all(r.ready or r.can_scale_from_zero or r.rejection is not None for r in self.routes.values())

    def model_ready(self, model: str) -> bool:
        return bool(self._route(model).ready)

    def record_decisions(self, recorder: DecisionRecorder) -> None:
        """Trace the gateway core's decisions into `recorder` (outputs.decisions; serve adds the controllers')."""
        self.core.recorder = recorder
        self.client_ids = {}

    def transitions(self) -> list[Transition]:
        """The breakers' state changes and the outlier detectors' ejections so far, as decision records."""
        return transition_records(self.core.models)

    def _route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise KeyError(f"unknown model {model!r}; known: {', '.join(self.routes)}")
        return route

    # -- a request's way through -------------------------------------------------------------------------------
    def new_job(
        self, request_id: str, model: str, priority_class: str, tenant: str, prompt_tokens: int, blocks: np.ndarray,
        *, session: str | None = None, cache_key_for: CacheKeyFn | None = None,
    ) -> Job:  # fmt: skip
        """A request arrived: the core counts it, looks the response cache up (`cache_key_for`: the request's key
        for a revision; `job.cached` is then the answer of a hit), and queues or dispatches it."""
        route = self._route(model)
        now = self.clock()
        t = new_ticket(next(self._ids), route.core.model, priority_class, tenant, now, prompt_tokens, blocks,
                       session_id(tenant, session))  # fmt: skip
        job = Job(t, request_id, model, cache_key_for)
        t.ref = job
        self.jobs[t.id] = job
        if self.client_ids is not None:
            self.client_ids[t.id] = request_id
        actions = self.core.arrive(now, t)
        held = self._by_core.get(t.route) if t.route is not None else None  # the revision that took it (fallback)
        if held is not None and held.concurrency is not None:  # held there until its final answer (as the sim)
            held.concurrency.change(now, 1)
            job.counted = held.concurrency
        self._run(actions)
        return job

    async def serve(self, job: Job, call: UpstreamCall) -> Buffered | Streaming:
        """Attempts, as the core dispatches them, until one answers (below 500; a stream once its first chunk came)
        or the core ends the request (GatewayError: shed, timed out, failed)."""
        if self._closing or not self._started:
            self.end_job(job)
            raise GatewayError(503, "failed", "shutting_down", "the gateway is not serving")
        while True:
            upstream = await self.acquire(job)
            route = self.routes[upstream.model]
            attempt = Attempt(self, job, route, upstream, self.clock())
            try:
                assert self._client is not None
                result = await self._forward(self._client, attempt, call, self.live.request_timeout_s)
            except AttemptFailed as failed:
                attempt.done(failed.kind, failed.detail, excused=self._gateway_stalled(attempt, failed))
                continue
            except BaseException:
                attempt.done(ABANDONED)  # the client went away or the gateway stops: not the replica's doing
                raise
            if isinstance(result, Buffered):  # a stream's end is reported by whoever relays it
                if 200 <= result.status < 300:
                    attempt.done(DONE, value=result.body, size_bytes=len(result.body))
                else:
                    attempt.done(REQUEST_FAULT, f"HTTP {result.status} from {upstream.name}")
            return result

    async def acquire(self, job: Job) -> Upstream:
        """Wait until the core dispatches `job` (its slot at the replica is then held); GatewayError when the core
        ends it instead."""
        while True:
            dispatch = await self._next_dispatch(job)
            upstream = self.routes[dispatch.model].upstreams.get(dispatch.endpoint)
            if upstream is not None:
                return upstream
            # removed between the core's pick and now: an attempt that could not connect
            detail = f"replica {dispatch.endpoint} was removed"
            self._run(self.core.attempt_done(self.clock(), job.ticket, "connect-failure", detail))

    async def _next_dispatch(self, job: Job) -> Dispatch:
        """Wait for the core's next word on `job`: a Dispatch, or its final answer (raised as GatewayError). Waiting
        longer than `live.request_timeout_s` withdraws it (503 timeout); a cancelled handler withdraws it too."""
        loop = asyncio.get_running_loop()
        while not job.inbox:
            job.waiter = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(job.waiter), self.live.request_timeout_s)
            except TimeoutError:
                if not job.inbox:
                    waited = self.clock() - job.arrival
                    detail = f"no replica took the request within {waited:.1f} s"
                    self._run(self.core.withdraw(self.clock(), job.ticket, TIMEOUT, "request_timeout", detail))
            except asyncio.CancelledError:
                self.end_job(job)
                raise
            finally:
                job.waiter = None
        action = job.inbox.popleft()
        if isinstance(action, Respond):
            raise GatewayError.of(action)
        return action

    def end_job(self, job: Job) -> None:
        """The handler is done with the request: one that got no final answer from the core (the client left, the
        handler failed) is ended now, its slot at a replica released."""
        t = job.ticket
        if t.done:
            return
        now = self.clock()
        if t.slot is not None:  # dispatched, but its handler never reported the attempt's end
            self._run(self.core.attempt_done(now, t, ABANDONED))
        else:
            self._run(self.core.withdraw(now, t, FAILED, "client_gone", "the client went away"))

    def _attempt_done(
        self, attempt: Attempt, outcome: str, detail: str, kind: str, excused: bool, value: object, size_bytes: int
    ) -> None:
        route, u = attempt.route, attempt.upstream
        if outcome not in (DONE, REQUEST_FAULT, ABANDONED) and not excused:
            self.metrics.upstream_failures.labels(route.name, kind).inc()
            if self.on_replica_failure is not None:
                try:
                    self.on_replica_failure(route.name, u.name, f"{kind}: {detail}" if detail else kind)
                except Exception:
                    log.exception("on_replica_failure(%s, %s) failed", route.name, u.name)
        actions = self.core.attempt_done(
            self.clock(), attempt.job.ticket, outcome, detail, excused=excused, value=value, size_bytes=size_bytes
        )
        self._run(actions)

    def _gateway_stalled(self, attempt: Attempt, failed: AttemptFailed) -> bool:
        """The attempt timed out or failed to connect while this gateway's event loop lagged more than
        `live.loop_stall_s`: its timers fired late, so the failure says nothing about the replica."""
        if failed.kind not in ("timeout", "connect-failure"):
            return False
        return self.loop_monitor.lag_within(self.clock() - attempt.started) > self.live.loop_stall_s

    # -- the core's actions ------------------------------------------------------------------------------------
    def _run(self, actions: list[Any], now: float | None = None) -> None:
        """Carry out the core's actions in order; `now`: the time they were decided at (default: the clock)."""
        for a in actions:
            cls = a.__class__
            if cls is Dispatch:
                a.ticket.ref.deliver(a)
            elif cls is Respond:
                job: Job = a.ticket.ref
                self.jobs.pop(a.ticket.id, None)
                if job.counted is not None:  # its final answer: it leaves its revision's in-flight integral
                    job.counted.change(self.clock(), -1)
                    job.counted = None
                job.deliver(a)
            elif cls is WakeAt:
                self.timers.schedule((self.clock() if now is None else now) + a.after_s, a.kind, a.target)
            elif cls is CacheWait:  # the lookup happened (in real time): go on at once
                self._run(self.core.cache_done(self.clock(), a.ticket))
            elif cls is Activate:
                self._activate(self._by_core[a.route].name)
            elif cls is Record:
                self._record(a)

    def _fire_due(self) -> None:
        if self._started:
            self.fire_timers(self.clock())

    def _activate(self, model: str) -> None:
        """Knative's activator: the request waits in the queue; the controller is asked for a replica."""
        if self.on_cold_request is not None:
            try:
                self.on_cold_request(model)
            except Exception:
                log.exception("on_cold_request(%s) failed", model)

    def _record(self, a: Record) -> None:
        if self.on_record is not None:
            try:
                self.on_record(a)
            except Exception:
                log.exception("on_record(%s) failed", a.kind)
        if a.kind in ("retry", "fallback"):
            self.metrics.retries.labels(a.model).inc()
        elif a.kind == "excused":
            self.metrics.attempts_excused.labels(a.model, a.detail).inc()

    def _shared_tier_in_use(self) -> SharedTier | None:
        return self.cache.shared if isinstance(self.cache, TieredResponseCache) else None


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


def _cache_key(route: RouteState, t: Ticket) -> int | None:
    """The core asks the request itself: only the HTTP layer knows whether it may be cached, and its key."""
    fn = t.ref.cache_key_for
    return None if fn is None else fn(route.name, route.version)
