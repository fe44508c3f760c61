"""Builds the simulated cluster (replicas, routers, gateway) from a scenario; no simulation logic here."""

from __future__ import annotations

from typing import Any

import numpy as np
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.rng import RngStreams
from odhsim.scenario.deployment import ServiceTime
from odhsim.scenario.model import Scenario
from odhsim.sim.controller import ModelController, Spend
from odhsim.sim.gateway import Gateway, ModelRoute
from odhsim.sim.gpu_pool import SimGpuPool
from odhsim.sim.replica_factory import ReplicaFactory
from odhsim.workload.schema import PRIORITY_CLASSES
from policies.autoscaling.config import build_autoscaler
from policies.builtin import REGISTRY
from policies.caching.config import build_response_cache
from policies.cost.budget import BudgetGuard
from policies.flowcontrol.config import build_flow_control
from policies.lifecycle.storage import StartupModel
from policies.resilience.config import build_breaker
from policies.routing.config import build_router


def build_cluster(
    env: simpy.Environment,
    scenario: Scenario,
    streams: RngStreams,
    log: RequestLog,
    tenant_names: list[str],
    block_tokens: int,
    events: list[dict[str, Any]],
    states: list[dict[str, Any]],
) -> Gateway:
    """Replicas, routers, flow control, caches, the gateway, the GPU pool and one controller per model;
    `events` and `states` collect the controllers' records (events.parquet, replicas.parquet)."""
    routes: list[ModelRoute] = []
    gateway_ref: list[Gateway] = []

    def on_finish(req, now, status, reason):  # type: ignore[no-untyped-def]
        gateway_ref[0].finish(req, now, status, reason)

    factory = ReplicaFactory(env, scenario, on_finish, block_tokens)
    interval = scenario.gateway.scrape_interval_s
    verdicts = [m.deploy_verdict() for m in scenario.models]
    for mi, m in enumerate(scenario.models):
        approved, reason = verdicts[mi]
        events.append({"time_s": 0.0, "kind": "deploy", "model": m.name, "replica": "", "detail": reason})
        mine = [factory.make(mi) for _ in range(m.replicas)] if approved else []
        router = build_router(scenario.gateway.router, streams.get(f"router.{m.name}"))
        gw = scenario.gateway
        flow = None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{m.name}"))
        targets = tuple(scenario.slo_for(c).ttft_s for c in PRIORITY_CLASSES)
        routes.append(ModelRoute(m.name, m.version, mine, router, gw.max_in_flight_per_replica, flow, targets))
    resilience = scenario.gateway.resilience
    for m, route in zip(scenario.models, routes, strict=True):
        if m.fallback is not None:
            route.fallback = routes[scenario.model_index(m.fallback)]
        if resilience is not None:
            route.breaker = build_breaker(resilience, streams.get(f"breaker.{m.name}"))
    cache = None
    if scenario.gateway.response_cache is not None:
        cache = build_response_cache(scenario.gateway.response_cache, streams.get("response_cache"))
    gateway = Gateway(env, routes, factory.replicas, log, tenant_names, block_tokens, interval, cache)
    gateway_ref.append(gateway)
    placer = REGISTRY.build("placement", scenario.placement, {}, streams.get("placement"))
    pool = SimGpuPool(scenario.gpu_pool, placer)  # type: ignore[arg-type]
    startup = StartupModel(scenario.startup)
    budget = scenario.budget_usd_per_hour
    spend = Spend(None if budget is None else BudgetGuard(budget))
    for mi, (m, route) in enumerate(zip(scenario.models, routes, strict=True)):
        autoscaler, intervals = None, (2.0, 1.0)
        approved, reason = verdicts[mi]
        if not approved:
            route.rejection = f"model {reason}"
        elif m.autoscaling is not None:
            autoscaler = build_autoscaler(m.autoscaling, streams.get(f"autoscaler.{m.name}"))
            intervals = (m.autoscaling.interval_s, m.autoscaling.metrics_interval_s)
        controller = ModelController(
            env, mi, m, route, gateway, factory, pool, startup, autoscaler, intervals, events, states
        )
        controller.spend = spend
        spend.controllers.append(controller)
        controller.adopt_initial()
        route.controller = controller
    return gateway


def draw_service_times(st: ServiceTime, rng: np.random.Generator, n: int) -> np.ndarray:
    """Service times of a `fixed` model: mean `mean_s`, coefficient of variation `cv` (exponential: cv = 1)."""
    if st.dist == "exponential":
        return rng.exponential(st.mean_s, n)
    if st.dist == "deterministic":
        return np.full(n, st.mean_s)
    if st.dist == "gamma":
        shape = 1.0 / st.cv**2
        return rng.gamma(shape, st.mean_s / shape, n)
    sigma2 = np.log1p(st.cv**2)
    return rng.lognormal(np.log(st.mean_s) - sigma2 / 2, np.sqrt(sigma2), n)
