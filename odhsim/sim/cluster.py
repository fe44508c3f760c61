"""Builds the simulated cluster (replicas, routers, gateway) from a scenario; no simulation logic here."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.rng import RngStreams
from odhsim.scenario.deployment import ModelDeployment, ServiceTime
from odhsim.scenario.model import Scenario
from odhsim.sim.controller import ModelController, Spend, sim_verdict
from odhsim.sim.gateway import Gateway, ModelRoute
from odhsim.sim.gpu_pool import SimGpuPool
from odhsim.sim.replica_factory import ReplicaFactory
from odhsim.sim.rollout import CanaryRollout, SplitPolicy
from odhsim.workload.schema import PRIORITY_CLASSES
from policies.autoscaling.config import build_autoscaler
from policies.builtin import REGISTRY
from policies.caching.config import build_response_cache
from policies.cost.budget import BudgetGuard
from policies.flowcontrol.config import build_flow_control
from policies.lifecycle.storage import StartupModel
from policies.resilience.config import build_breaker, build_outlier_detector, build_retry
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
    """Replicas, routers, flow control, caches, the gateway, the GPU pool and one controller per model revision
    (a model with a canary has two, and a rollout that splits its traffic and runs the scenario's actions);
    `events` and `states` collect the controllers' records (events.parquet, replicas.parquet)."""
    routes: list[ModelRoute] = []
    gateway_ref: list[Gateway] = []

    def on_finish(req, now, status, reason):  # type: ignore[no-untyped-def]
        gateway_ref[0].finish(req, now, status, reason)

    factory = ReplicaFactory(env, scenario, on_finish, block_tokens)
    interval = scenario.gateway.scrape_interval_s
    verdicts = [sim_verdict(m) for m in scenario.models]
    for mi, m in enumerate(scenario.models):
        approved, reason = verdicts[mi]
        events.append({"time_s": 0.0, "kind": "deploy", "model": m.name, "replica": "", "detail": reason})
        mine = [factory.make(mi, g) for g in m.groups() for _ in range(g.replicas)] if approved else []
        router = build_router(scenario.gateway.router, streams.get(f"router.{m.name}"))
        gw = scenario.gateway
        flow = None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{m.name}"))
        targets = tuple(scenario.slo_for(c).ttft_s for c in PRIORITY_CLASSES)
        route = ModelRoute(m.name, m.version, mine, router, gw.max_in_flight_per_replica, flow, targets)
        route.version_code = log.version_code(m.version)
        canary = m.canary_deployment()
        if canary is not None:  # the latest revision: its own replicas, router and queue; no replica until it starts
            tag = f"{m.name}@{canary.version}"
            c_router = build_router(gw.router, streams.get(f"router.{tag}"))
            c_flow = (
                None if gw.flow_control is None else build_flow_control(gw.flow_control, streams.get(f"flow.{tag}"))
            )
            latest = ModelRoute(m.name, canary.version, [], c_router, gw.max_in_flight_per_replica, c_flow, targets)
            latest.revision, latest.primary = 1, route
            latest.version_code = log.version_code(canary.version)
            route.revisions.append(latest)
            if canary.kind == "fixed" and canary.service_time != m.service_time:
                st, rng = canary.service_time, streams.get(f"service.{tag}")
                assert st is not None
                factory.service_draws[(mi, 1)] = lambda st=st, rng=rng: float(draw_service_times(st, rng, 1)[0])
        routes.append(route)
    resilience = scenario.gateway.resilience
    for m, route in zip(scenario.models, routes, strict=True):
        if m.fallback is not None:
            route.fallback = routes[scenario.model_index(m.fallback)]
        if resilience is not None:  # the live gateway's streams and objects (runtime.gateway.route.build_routes)
            route.breaker = build_breaker(resilience, streams.get(f"breaker.{m.name}"))
            route.core.retry = build_retry(resilience, streams.get(f"retry.{m.name}"))
            route.core.outlier = build_outlier_detector(resilience, streams.get(f"outlier.{m.name}"))
            if route.core.outlier is not None:  # the cluster's hosts, so the ejection cap counts every replica
                route.core.outlier.set_hosts(r.name for r in route.replicas)
    cache = None
    if scenario.gateway.response_cache is not None:
        cache = build_response_cache(scenario.gateway.response_cache, streams.get("response_cache"))
    gateway = Gateway(env, routes, factory.replicas, log, tenant_names, block_tokens, interval, cache)
    gateway_ref.append(gateway)
    gateway.step_log = factory.step_log  # outputs.steps: the engines' step rows (None: off)
    placer = REGISTRY.build("placement", scenario.placement, {}, streams.get("placement"))
    pool = SimGpuPool(scenario.gpu_pool, placer)  # type: ignore[arg-type]
    startup = StartupModel(scenario.startup)
    budget = scenario.budget_usd_per_hour
    spend = Spend(None if budget is None else BudgetGuard(budget))
    for mi, (m, route) in enumerate(zip(scenario.models, routes, strict=True)):
        approved, reason = verdicts[mi]
        if not approved:
            route.rejection = f"model {reason}"
        controller = _controller(env, mi, m, route, approved, f"autoscaler.{m.name}", streams, gateway, factory, pool,
                                 startup, events, states)  # fmt: skip
        controller.spend = spend
        spend.controllers.append(controller)
        controller.adopt_initial()
        route.controller = controller
        canary = m.canary_deployment()
        if canary is None or m.canary is None:
            continue
        latest = route.revisions[1]
        c_approved = sim_verdict(canary)[0]
        latest.controller = _controller(env, mi, canary, latest, c_approved, f"autoscaler.{m.name}@{canary.version}",
                                        streams, gateway, factory, pool, startup, events, states)  # fmt: skip
        latest.controller.spend = spend
        latest.controller.last_desired = 0
        spend.controllers.append(latest.controller)
        split = cast(SplitPolicy, REGISTRY.build("traffic-split", m.canary.split, {}, streams.get(f"canary.{m.name}")))
        route.rollout = latest.rollout = CanaryRollout(env, gateway, route, latest, m.canary, canary, split, events)
    for action in sorted(scenario.actions, key=lambda a: a.at_s):
        rollout = routes[scenario.model_index(action.model)].rollout
        timer = env.timeout(action.at_s)
        timer.callbacks.append(lambda _e, r=rollout, a=action: r.apply(a.action, a.percent))
    return gateway


def _controller(
    env: simpy.Environment,
    mi: int,
    m: ModelDeployment,
    route: ModelRoute,
    approved: bool,
    stream: str,
    streams: RngStreams,
    gateway: Gateway,
    factory: ReplicaFactory,
    pool: SimGpuPool,
    startup: StartupModel,
    events: list[dict[str, Any]],
    states: list[dict[str, Any]],
) -> ModelController:
    """A revision's controller, with its autoscaler when it has one (and was approved)."""
    autoscaler, intervals = None, (2.0, 1.0)
    if approved and m.autoscaling is not None:
        autoscaler = build_autoscaler(m.autoscaling, streams.get(stream))
        intervals = (m.autoscaling.interval_s, m.autoscaling.metrics_interval_s)
    return ModelController(env, mi, m, route, gateway, factory, pool, startup, autoscaler, intervals, events, states)


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
