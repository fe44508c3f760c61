"""Runs one scenario end to end: workload -> gateway -> replicas -> tidy results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from heapq import heappop
from typing import Any

import pandas as pd
import simpy

from odhsim.explain.anomalies import anomaly_counts, find_anomalies, with_anomaly_events
from odhsim.explain.regret import run_regret
from odhsim.results.decisions import decisions_frame, merge_in_time
from odhsim.results.request_log import RequestLog
from odhsim.results.run_result import RunResult
from odhsim.results.summary import summarize, unserved_models
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from odhsim.sim.arrivals import ArrivalFeeder
from odhsim.sim.cluster import build_cluster
from odhsim.sim.faults import start_faults
from odhsim.sim.faults_infra import start_infra_faults
from odhsim.sim.gateway import Gateway
from odhsim.sim.run_warnings import run_warnings
from odhsim.sim.sampler import TimeseriesSampler
from odhsim.workload.build import build_workload
from policies.decisions import ListRecorder

ProgressFn = Callable[[float, float | None, int], None]
"""progress(simulated_now_s, simulated_horizon_s or None, requests_arrived)."""


PROGRESS_WALL_S = (0.1, 0.4)
"""Each progress chunk aims at this much wall time: the bar moves whatever the horizon (1e9 s included)."""


def _run_until(env: simpy.Environment, until: simpy.Event) -> None:
    """`env.run(until=until)` with `Environment.step`'s body inlined (simpy 4.1.2, pinned): the same events in the
    same order, without a method call per event."""
    queue = env._queue  # type: ignore[attr-defined]
    while until.callbacks is not None:  # None once the event has been processed
        try:
            env._now, _, _, event = heappop(queue)  # type: ignore[attr-defined]
        except IndexError:
            raise RuntimeError(f'No scheduled events left but "until" event was not triggered: {until}') from None
        callbacks, event.callbacks = event.callbacks, None
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            if event is until:  # what env.run raises when its `until` failed
                raise event._value
            exc = type(event._value)(*event._value.args)  # Environment.step: a copy, caused by the original
            exc.__cause__ = event._value
            raise exc


def _run_in_chunks(
    env: simpy.Environment,
    done: simpy.Event,
    stop: float,
    step: float,
    stopped: Callable[[], bool],
    report: Callable[[], None] | None,
) -> None:
    """Run until `done` fires or `stop`; with `report`, in chunks of simulated time sized so that one takes
    PROGRESS_WALL_S of wall time (doubling or halving the step), reporting after each."""
    if report is None:
        _run_until(env, done if math.isinf(stop) else done | env.timeout(stop))
        return
    low, high = PROGRESS_WALL_S
    while not stopped() and env.now < stop:
        t0 = time.perf_counter()
        env.run(until=done | env.timeout(min(step, stop - env.now)))
        report()
        took = time.perf_counter() - t0
        step = step * 2 if took < low else step / 2 if took > high else step


def outlier_events(gateway: Gateway) -> list[dict[str, Any]]:
    """The outlier detectors' ejections (`ejection`, detail: why) and returns (`ejection_end`), as events rows."""
    return [
        {"time_s": t, "kind": "ejection" if what == "ejected" else "ejection_end", "model": route.name,
         "replica": host, "detail": reason}
        for route in gateway.routes
        if route.core.outlier is not None
        for t, host, what, reason in route.core.outlier.events
    ]  # fmt: skip


def simulate(scenario: Scenario, *, seed: int | None = None, progress: ProgressFn | None = None) -> RunResult:
    """Run `scenario` (with `seed` overriding the scenario's) and return its tidy results."""
    seed = scenario.seed if seed is None else int(seed)
    wall0 = time.perf_counter()
    streams = RngStreams(seed)
    model_names = [m.name for m in scenario.models]
    workload = build_workload(scenario.workload, model_names=model_names, streams=streams, base_dir=scenario.base_dir)
    env = simpy.Environment()
    log = RequestLog()
    tenant_names = list(workload.tenant_names)
    events_log: list[dict[str, Any]] = []
    states_log: list[dict[str, Any]] = []
    gateway = build_cluster(env, scenario, streams, log, tenant_names, workload.block_tokens, events_log, states_log)
    horizon = scenario.hard_stop_s or scenario.duration_s
    if scenario.faults:  # node and deploy faults (odhsim.sim.faults_infra); nothing to do without a faults: section
        start_infra_faults(env, scenario, gateway, streams, events_log)
        start_faults(env, scenario, gateway, streams, events_log, horizon)  # replica, network, cache, metrics
    gateway.events = events_log  # the core's retries, fallbacks and alerts (there are none without failures)
    if gateway.cache is not None:  # the response cache's lookups, where odhsim.explain finds stampedes
        gateway.cache_lookups = []
    share = scenario.outputs.decisions_share
    recorder = ListRecorder(share) if share > 0 else None
    if recorder is not None:
        gateway.record_decisions(recorder)
    for route in gateway.routes:
        if route.autoscaled:
            env.process(route.controller.run())
    arrivals = ArrivalFeeder(env, workload.batches(), gateway, log, scenario, streams)

    def finished() -> bool:
        return (
            arrivals.done and gateway.in_flight == 0 and (scenario.duration_s is None or env.now >= scenario.duration_s)
        )

    sampler = TimeseriesSampler(env, scenario, gateway, finished)
    sampler_done = env.process(sampler.process())
    stop = scenario.hard_stop_s if scenario.hard_stop_s is not None else math.inf
    # The sampler ends the run once arrivals are over and nothing is in flight (SimPy's run(until=...) leaves
    # its own marker event queued, so "no events left" cannot serve as the end condition). The run stops at that
    # event, so where the progress chunks fall never changes the results.
    _run_in_chunks(env, sampler_done, stop, scenario.outputs.timeseries_bucket_s, lambda: sampler.stopped,
                   None if progress is None else lambda: progress(env.now, horizon, arrivals.arrived))  # fmt: skip
    hard_stopped = not sampler.stopped
    sampler.sample()
    end_s = env.now
    wall_s = time.perf_counter() - wall0

    run_id = f"{scenario.name}-seed{seed}"
    replica_names = [r.name for r in gateway.replicas]
    requests = log.to_frame(model_names, tenant_names, replica_names)
    columns = ["time_s", "model", "replica", "state"]
    final = [
        {"time_s": end_s, "model": r.model_name, "replica": r.name, "state": "stopped"}
        for r in gateway.replicas
        if r.state != "gone"
    ]
    replicas = pd.DataFrame(states_log + final, columns=columns)
    ending = {"time_s": end_s, "kind": "hard_stop" if hard_stopped else "end", "model": "", "replica": "", "detail": ""}
    events = pd.DataFrame([*events_log, ending], columns=["time_s", "kind", "model", "replica", "detail"])
    reactions = [
        {"time_s": t, "kind": "breaker", "model": route.name, "replica": "", "detail": f"{old} -> {new}"}
        for route in gateway.routes
        if route.breaker is not None
        for t, old, new in route.breaker.transitions
    ] + outlier_events(gateway)
    if reactions:
        events = pd.concat([events, pd.DataFrame(reactions)], ignore_index=True)
        events = events.sort_values("time_s", kind="stable", ignore_index=True)
    timeseries = pd.DataFrame(sampler.rows)
    decisions = None if recorder is None else decisions_frame(merge_in_time(recorder.records, gateway.transitions()))
    anomalies = find_anomalies(scenario, requests, events, timeseries, replicas, end_s, gateway.cache_lookups)
    events = with_anomaly_events(events, anomalies)
    preemptions = sum(getattr(r, "preemptions", 0) for r in gateway.replicas)
    latency = {
        r.model_name: r.latency
        for r in reversed(gateway.replicas)
        if hasattr(getattr(r, "latency", None), "prefill_base_s")
    }
    router = scenario.gateway.router.profile or "custom"
    summary = summarize(
        requests,
        timeseries,
        scenario,
        end_s=end_s,
        wall_s=wall_s,
        extra={
            "preemptions": preemptions,
            "hard_stopped": hard_stopped,
            "seed": seed,
            "run_id": run_id,
            "unserved_models": unserved_models(scenario, requests, replicas, events),
            "anomalies": anomaly_counts(anomalies),
            **run_regret(decisions, requests, latency, workload.block_tokens, dict.fromkeys(latency, router)),
            **({"response_cache": gateway.cache.stats()} if gateway.cache is not None else {}),
        },
    )
    summary.setdefault("warnings", []).extend(run_warnings(scenario, workload))
    return RunResult.tag(
        scenario_name=scenario.name,
        run_id=run_id,
        seed=seed,
        requests=requests,
        replicas=replicas,
        timeseries=timeseries,
        events=events,
        summary=summary,
        steps=None if gateway.step_log is None else gateway.step_log.to_frame(),
        decisions=decisions,
    )
