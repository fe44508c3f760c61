"""The same scripted event sequence through the SimPy gateway and the asyncio gateway yields the same decisions.

Each case is a scenario's gateway section and a script: arrivals (priority class, tenant, session), scrapes of a
replica's metrics, the end of an attempt (ok, 5xx, connect failure, reset) and plain advances of the clock (due
timers: back-offs, TTL sweeps, outlier sweeps, the saturation gate). The SimPy side runs the script on a
simpy.Environment with fake replicas; the asyncio side on a running event loop with a fake clock and a fake
upstream (the gateway's `forward_fn`: every attempt waits until the script ends it). Both adapters are recorded at
their boundary with the core (what their `_run` carries out): every dispatch (request, replica, attempt, model,
fallback), final answer (status, reason), wake-up, activation and record (retry, fallback, failure).

The SimPy adapter has no scrape event of its own (its replicas are read at pick time and the saturation gate tries
again after a scrape interval), so a scripted scrape reaches it through `replica_ready`, which hands the core the
same `scraped` event the asyncio adapter's scraper does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from odhsim.sim.gateway import Gateway as SimGateway
from odhsim.sim.gateway import ModelRoute as SimRoute
from odhsim.sim.request import STATUS_OK, SimRequest
from policies.flowcontrol.config import build_flow_control
from policies.flowcontrol.priority import PRIORITY_CLASSES
from policies.gateway.types import Activate, Dispatch, Record, Respond, WakeAt
from policies.resilience.config import build_breaker, build_outlier_detector, build_retry
from policies.routing.config import build_router
from policies.routing.types import EndpointState
from runtime.gateway.auth import KeyStore
from runtime.gateway.core import Attempt
from runtime.gateway.core import Gateway as LiveGateway
from runtime.gateway.forward import AttemptFailed, Buffered, UpstreamCall
from runtime.gateway.limits import BLOCK_TOKENS
from runtime.gateway.route import GatewayError, ttft_targets
from runtime.gateway.upstream import ScrapedMetrics

LM = {"lm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 128}}
REPLICAS = {"chat": ["c0", "c1"], "backup": ["b0"]}
TENANTS = ["acme", "beta"]


def make_scenario(gateway: dict[str, Any]) -> Scenario:
    models = [
        {"name": "chat", "gpu": "L4", "profile": "llama3.2-1b", "replicas": 2, "fallback": "backup", "live": LM},
        {"name": "backup", "gpu": "L4", "profile": "llama3.2-1b", "replicas": 1, "live": LM},
    ]
    return Scenario.model_validate(
        {
            "name": "equivalence",
            "seed": 5,
            "gpu_pool": [{"gpu": "L4", "count": 8}],
            "models": models,
            "gateway": gateway,
            "live": {"request_timeout_s": 600.0, "scrape_interval_s": 0.5},
            "workload": {"sources": [{"kind": "poisson", "rate": 1, "requests": 1}]},
        }
    )


# -- the script -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrive:
    t: float
    id: int
    model: str = "chat"
    priority: str = "normal"
    tenant: str = "acme"
    session: int = -1


@dataclass(frozen=True)
class Scrape:
    t: float
    replica: str
    waiting: int
    running: int
    kv: float


@dataclass(frozen=True)
class End:
    t: float
    id: int
    outcome: str = "ok"  # ok | 5xx | connect-failure | reset


@dataclass(frozen=True)
class Advance:
    t: float


Event = Arrive | Scrape | End | Advance


def decision(a: Any) -> tuple[Any, ...] | None:
    if isinstance(a, Dispatch):
        return ("dispatch", a.ticket.id, a.endpoint, a.attempt, a.model, a.fallback)
    if isinstance(a, Respond):
        return ("respond", a.ticket.id, a.status, a.reason)
    if isinstance(a, WakeAt):
        return ("wake", a.kind, round(a.after_s, 9))
    if isinstance(a, Activate):
        return ("activate", a.route.name)
    if isinstance(a, Record):
        return ("record", a.kind, a.model, a.detail)
    return None


def spy(gateway: Any, out: list[tuple[Any, ...]]) -> None:
    run = gateway._run

    def recording(actions: list[Any], *when: float) -> None:
        for a in actions:
            d = decision(a)
            if d is not None:
                out.append(d)
        run(actions, *when)

    gateway._run = recording


# -- the SimPy side -------------------------------------------------------------------------------------------------
class FakeSimReplica:
    def __init__(self, index: int, name: str, model: str) -> None:
        self.index = index
        self.name = name
        self.state = "ready"
        self.in_flight = 0
        self.held: dict[int, SimRequest] = {}
        self.metrics = EndpointState(name, model)

    def scraped_state(self) -> EndpointState:
        return self.metrics

    def submit(self, req: SimRequest) -> None:
        req.replica = self.index
        self.held[req.row] = req


def run_sim(sc: Scenario, script: list[Event]) -> tuple[list[tuple[Any, ...]], dict[int, str]]:
    env = simpy.Environment()
    streams = RngStreams(sc.seed)
    gw = sc.gateway
    replicas: list[FakeSimReplica] = []
    routes: list[SimRoute] = []
    for m in sc.models:
        reps = [FakeSimReplica(len(replicas) + k, n, m.name) for k, n in enumerate(REPLICAS[m.name])]
        replicas += reps
        router = build_router(gw.router, streams.get(f"router.{m.name}"))
        flow = None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{m.name}"))
        route = SimRoute(m.name, m.version, reps, router, gw.max_in_flight_per_replica, flow, ttft_targets(sc))  # type: ignore[arg-type]
        if gw.resilience is not None:
            route.breaker = build_breaker(gw.resilience, streams.get(f"breaker.{m.name}"))
            route.core.outlier = build_outlier_detector(gw.resilience, streams.get(f"outlier.{m.name}"))
            route.core.retry = build_retry(gw.resilience, streams.get(f"retry.{m.name}"))
        route.core.scales = True  # replicas are declared (the live engine's rule; nothing here leaves them unready)
        routes.append(route)
    names = [m.name for m in sc.models]
    for m, route in zip(sc.models, routes, strict=True):
        if m.fallback is not None:
            route.fallback = routes[names.index(m.fallback)]
    log = RequestLog(64)
    decisions: list[tuple[Any, ...]] = []
    gateway = SimGateway(env, routes, replicas, log, TENANTS, BLOCK_TOKENS, sc.live.scrape_interval_s)  # type: ignore[arg-type]
    spy(gateway, decisions)
    by_name = {r.name: r for r in replicas}
    for ev in script:
        env.run(until=ev.t)
        if isinstance(ev, Arrive):
            req = SimRequest(ev.id, ev.t, 8, 4, names.index(ev.model), PRIORITY_CLASSES.index(ev.priority),
                             TENANTS.index(ev.tenant), ev.session, np.arange(2, dtype=np.int64))  # fmt: skip
            gateway.arrive(req)
        elif isinstance(ev, Scrape):
            r = by_name[ev.replica]
            r.metrics = EndpointState(r.name, r.metrics.model, ev.waiting, ev.running, ev.kv, scraped_at=ev.t)
            gateway.replica_ready(routes[names.index(r.metrics.model)])
        elif isinstance(ev, End):
            holder = next(r for r in replicas if ev.id in r.held)
            req = holder.held.pop(ev.id)
            if ev.outcome == "ok":
                gateway.finish(req, env.now, STATUS_OK, "")
            else:
                gateway.finish(req, env.now, "failed", f"{ev.outcome} from {holder.name}", kind=ev.outcome)
    env.run(until=script[-1].t + 1e-6)
    finals = {d[1]: f"{d[2]}/{d[3]}" for d in decisions if d[0] == "respond"}
    return decisions, finals


# -- the asyncio side -----------------------------------------------------------------------------------------------
def run_live(sc: Scenario, script: list[Event]) -> tuple[list[tuple[Any, ...]], dict[int, str]]:
    now = [0.0]
    pending: dict[int, asyncio.Future[None]] = {}
    outcomes: dict[int, str] = {}

    async def fake_forward(client: Any, attempt: Attempt, call: UpstreamCall, timeout_s: float) -> Buffered:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending[attempt.job.rid] = fut
        await fut
        kind = outcomes.pop(attempt.job.rid)
        if kind != "ok":
            raise AttemptFailed(kind, f"{kind} from {attempt.upstream.name}")
        return Buffered(200, b"{}", "application/json", attempt.upstream.name, attempt.route.name)

    async def main() -> tuple[list[tuple[Any, ...]], dict[int, str]]:
        gw = LiveGateway(sc, RngStreams(sc.seed), keys=KeyStore.from_keys({}), clock=lambda: now[0],
                         forward_fn=fake_forward)  # fmt: skip
        for model, names in REPLICAS.items():
            for n in names:
                gw.add_replica(model, n, "http://127.0.0.1:9")  # never contacted: the scrapers only fail
        gw.start()  # arms the outlier sweeps, as the SimPy gateway does on construction (before its spy too)
        decisions: list[tuple[Any, ...]] = []
        spy(gw, decisions)
        finals: dict[int, str] = {}
        call = UpstreamCall(path=lambda m: "/v1/completions", body=lambda m: {})

        async def serve(job: Any) -> None:
            try:
                result = await gw.serve(job, call)
                finals[job.rid] = f"ok/{result.status}"
            except GatewayError as err:
                finals[job.rid] = f"{err.outcome}/{err.reason}/{err.status}"

        async def settle() -> None:
            for _ in range(20):
                await asyncio.sleep(0)

        tasks = []
        try:
            for ev in script:
                now[0] = ev.t
                gw.fire_timers(ev.t)
                if isinstance(ev, Arrive):
                    job = gw.new_job(f"r{ev.id}", ev.model, ev.priority, ev.tenant, 8, np.arange(2, dtype=np.int64),
                                     session=None if ev.session < 0 else f"s{ev.session}")  # fmt: skip
                    assert job.rid == ev.id, "ids line up with the SimPy rows"
                    tasks.append(asyncio.create_task(serve(job)))
                elif isinstance(ev, Scrape):
                    u = next(r.upstreams[ev.replica] for r in gw.routes.values() if ev.replica in r.upstreams)
                    u.metrics = ScrapedMetrics(ev.waiting, ev.running, ev.kv, ev.t)
                    gw._on_scraped(u)
                elif isinstance(ev, End):
                    outcomes[ev.id] = ev.outcome
                    pending.pop(ev.id).set_result(None)
                await settle()
            now[0] = script[-1].t + 1e-6
            gw.fire_timers(now[0])
            await settle()
        finally:
            await gw.aclose()
            await settle()
            for task in tasks:
                task.cancel()
        return decisions, finals

    return asyncio.run(main())


# -- the cases ------------------------------------------------------------------------------------------------------
ENVOY = {"retry": {"type": "envoy-budget", "params": {"max_retries": 2, "base_interval_s": 0.01}}}
LADDER = {"retry": {"type": "ladder", "params": {"retry_same_after": 1, "fallback_after": 2, "base_interval_s": 0.01}}}
BREAKER = {
    "breaker": {"type": "consecutive-failures", "params": {"failure_threshold": 2, "cooldown_s": 5}},
    "outlier_detection": {"type": "envoy", "params": {"consecutive_5xx": 2, "interval_s": 1.0}},
}
SESSIONS = {
    "plugins": [
        {"name": "session", "type": "session-affinity-scorer"},
        {"name": "queue", "type": "queue-scorer"},
        {"name": "pick", "type": "max-score-picker"},
    ],
    "filters": [],
    "scorers": [{"plugin": "session", "weight": 10.0}, {"plugin": "queue", "weight": 1.0}],
    "picker": "pick",
}
FLOW = {
    "queue": {"type": "strict-priority", "params": {"capacity": {"low": 2}}},
    "gate_dispatch_on_saturation": False,
    "ttl_s": {"low": 0.4},
}

CASES: dict[str, tuple[dict[str, Any], list[Event]]] = {
    "envoy retries another replica after 5xx and connect failures": (
        {"router": {"profile": "round-robin"}, "resilience": ENVOY},
        [
            Arrive(0.011, 1),
            Arrive(0.021, 2, priority="critical", tenant="beta"),
            End(0.031, 1, "5xx"),
            Advance(0.101),
            End(0.111, 2),
            End(0.121, 1),
            Arrive(0.131, 3),
            End(0.141, 3, "connect-failure"),
            Advance(0.301),
            End(0.311, 3, "reset"),
            Advance(0.601),
            End(0.611, 3, "5xx"),
            Advance(0.9),
        ],
    ),
    "ladder: same model, then the fallback": (
        {"router": {"profile": "round-robin"}, "resilience": LADDER},
        [
            Arrive(0.013, 1),
            End(0.023, 1, "5xx"),
            Advance(0.2),
            End(0.213, 1, "5xx"),
            Advance(0.5),
            End(0.513, 1),
            Arrive(0.6, 2, model="backup"),
            End(0.61, 2),
        ],
    ),
    "breaker opens, the fallback serves, a half-open probe closes it": (
        {"router": {"profile": "round-robin"}, "resilience": BREAKER},
        [
            Arrive(0.017, 1),
            End(0.027, 1, "5xx"),
            Arrive(0.037, 2),
            End(0.047, 2, "5xx"),
            Arrive(0.057, 3),
            End(0.067, 3),
            Advance(1.3),
            Advance(2.3),
            Arrive(5.5, 4),
            End(5.6, 4),
            Arrive(5.7, 5),
            End(5.8, 5),
        ],
    ),
    "priority queue, eviction, TTL, sessions and scrapes": (
        {"router": SESSIONS, "max_in_flight_per_replica": 1, "flow_control": FLOW},
        [
            Scrape(0.005, "c0", 0, 1, 0.2),
            Scrape(0.006, "c1", 3, 1, 0.5),
            Arrive(0.011, 1, session=7),
            Arrive(0.012, 2, session=8, tenant="beta"),
            Arrive(0.013, 3, priority="low"),
            Arrive(0.014, 4, priority="low"),
            Arrive(0.015, 5, priority="low"),
            Arrive(0.016, 6, priority="critical", session=7),
            End(0.2, 1),
            End(0.21, 2),
            Advance(0.5),
            End(0.6, 6),
            End(0.605, 3),
            Scrape(0.61, "c0", 5, 1, 0.9),
            Scrape(0.62, "c1", 0, 0, 0.1),
            Arrive(0.7, 7, session=7),
            Arrive(0.71, 8, session=8, tenant="beta"),
            End(0.8, 7),
            End(0.81, 8),
            Arrive(0.9, 9, session=8, tenant="beta"),
            End(0.95, 9),
        ],
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_simpy_and_asyncio_adapters_make_the_same_decisions(case: str) -> None:
    gateway, script = CASES[case]
    sc = make_scenario(gateway)
    sim, sim_finals = run_sim(sc, script)
    live, live_finals = run_live(sc, script)
    assert [d for d in sim if d[0] == "dispatch"], "the script dispatched nothing"
    assert live == sim
    # every request got its final answer on both sides, and the HTTP answer agrees with the core's
    arrived = {ev.id for ev in script if isinstance(ev, Arrive)}
    assert set(sim_finals) == arrived == set(live_finals)
    for rid, final in sim_finals.items():
        status, reason = final.split("/")
        shown = live_finals[rid]
        assert shown == "ok/200" if status == "ok" else shown.startswith(f"{status}/{reason}/"), (rid, final, shown)
