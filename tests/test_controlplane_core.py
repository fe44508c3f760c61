"""The pure controller core: metrics over elapsed time, tick schedule, victims, restarts, deploy, budget, devices."""

from __future__ import annotations

import math

import pytest

from policies.autoscaling.types import ScaleDecision, ScalingMetrics
from policies.controlplane import (
    ControllerCore,
    DeployFacts,
    DeviceSlots,
    LoadSnapshot,
    MetricsAccumulator,
    ReplicaView,
    RestartPolicy,
    Spend,
    TickSchedule,
    choose_victims,
    deploy_verdict,
)
from policies.controlplane.metrics import ConcurrencyIntegral
from policies.cost.budget import BudgetGuard
from policies.lifecycle.states import RestartBackoff
from policies.placement.binpack import BestFit, FirstFitDecreasing, NodeState


def snap(now: float, arrivals: int, **kw: float) -> LoadSnapshot:
    return LoadSnapshot(
        now=now, arrivals=arrivals, in_flight=kw.pop("in_flight", 0.0), queued=0, ready=1, pending=0, **kw
    )  # type: ignore[arg-type]


def test_rates_divide_by_the_time_that_elapsed() -> None:
    acc = MetricsAccumulator(start=0.0)
    assert acc.observe(snap(1.0, 10)).arrivals_per_s == 10.0
    # a late tick: 2.5 s since the last observation, 5 arrivals -> 2/s (not 5/s over a nominal 1 s interval)
    assert acc.observe(snap(3.5, 15)).arrivals_per_s == 2.0
    assert acc.observe(snap(3.5, 15)).arrivals_per_s == 0.0  # no time elapsed: no rate, no division by zero


def test_avg_concurrency_is_the_integral_over_elapsed_time() -> None:
    conc = ConcurrencyIntegral(start=0.0)
    conc.change(0.0, +1)
    conc.change(1.0, +1)  # 1 in flight for 1 s, then 2 for 1 s
    acc = MetricsAccumulator(start=0.0, in_flight_s=0.0)
    m = acc.observe(snap(2.0, 2, in_flight=2.0, in_flight_s=conc.value(2.0)))
    assert m.avg_concurrency == pytest.approx(1.5)
    conc.change(3.0, -2)
    assert acc.observe(snap(4.0, 2, in_flight_s=conc.value(4.0))).avg_concurrency == pytest.approx(1.0)
    assert acc.observe(snap(5.0, 2)).avg_concurrency is None  # an engine without the integral


def test_snapshot_means_and_idle_time() -> None:
    acc = MetricsAccumulator(start=0.0)
    s = LoadSnapshot(2.0, 4, 3.0, 5, 2, 1, waiting=4.0, kv_usage_sum=1.2, serving=2, last_arrival_s=1.5)
    m = acc.observe(s)
    assert (m.kv_usage, m.waiting_per_replica, m.seconds_since_last_request, m.queue_len) == (0.6, 2.0, 0.5, 5)
    assert acc.observe(LoadSnapshot(3.0, 4, 0.0, 0, 0, 0)).seconds_since_last_request == math.inf


def test_schedule_observes_on_a_grid_and_decides_every_decision_interval_or_on_a_poke() -> None:
    s = TickSchedule(start=10.0, decide_every_s=2.0, observe_every_s=1.0)
    due = []
    for t in (10.0, 11.0, 12.0, 13.0):
        due.append(s.tick(t))
    assert due == [True, False, True, False]
    s.poke()
    assert s.tick(14.0) is True and s.tick(15.0) is False  # 14 is on the decision grid anyway
    s.poke()
    assert s.tick(15.5) is True  # poke honoured at the next observation
    assert s.tick(19.3) is True and s.next_observe == 20.0  # late: catches up, one decision
    with pytest.raises(ValueError, match="intervals must be > 0"):
        TickSchedule(0.0, 0.0, 1.0)


def test_victims_pending_then_starting_then_failed_then_shortest_ready() -> None:
    rs = [
        ReplicaView("r0", 0, "ready", ready_since=5.0),
        ReplicaView("r1", 1, "ready", ready_since=9.0),
        ReplicaView("r2", 2, "failed", restarts=1),
        ReplicaView("r3", 3, "loading"),
        ReplicaView("r4", 4, "pending"),
        ReplicaView("r5", 5, "restarting", restarts=3),
        ReplicaView("r6", 6, "ready", ready_since=9.0, restarts=2),
    ]
    order = [r.name for r in choose_victims(rs, 7)]
    assert order == ["r4", "r3", "r5", "r2", "r6", "r1", "r0"]
    assert [r.name for r in choose_victims(rs, 2)] == ["r4", "r3"]
    assert choose_victims(rs, 0) == []
    with pytest.raises(ValueError, match="'rx' in state 'draining'"):
        choose_victims([ReplicaView("rx", 0, "draining")], 1)


def test_restart_backoff_doubles_and_resets_after_a_long_run() -> None:
    policy = RestartPolicy(RestartBackoff(base_s=10, factor=2, max_s=300, reset_after_s=600))
    d1 = policy.on_failure(100.0, 0, 5.0)
    d2 = policy.on_failure(200.0, d1.attempt, 5.0)
    d3 = policy.on_failure(900.0, d2.attempt, 650.0)
    assert [(d.attempt, d.delay_s, d.at_s) for d in (d1, d2, d3)] == [
        (1, 10.0, 110.0),
        (2, 20.0, 220.0),
        (1, 10.0, 910.0),
    ]
    assert d2.reason == "restart 2 after 20 s (CrashLoopBackOff)"
    assert policy.on_failure(1.0, 2, 0.0, retiring=True).restart is False


def test_deploy_verdicts() -> None:
    ok = DeployFacts("chat", "sim", True, "approved: 1 x chat on A100")
    assert deploy_verdict(ok).approved and deploy_verdict(ok).reason == "approved: 1 x chat on A100"
    live = DeployFacts("chat", "live", True, "approved", has_live_section=False)
    assert deploy_verdict(live).reason == "rejected: no `live:` section (the torch model its replicas run)"
    big = DeployFacts("chat", "live", True, "approved", True, ("cpu",), devices_per_replica=2, device_count=1)
    assert "needs 2 devices (tp x pp) but live.devices declares 1 (cpu)" in deploy_verdict(big).reason
    bad = DeployFacts("chat", "sim", False, "rejected: does not fit")
    assert not deploy_verdict(bad) and deploy_verdict(bad).reason == "rejected: does not fit"


class _Fixed:
    def __init__(self, usd: float) -> None:
        self.usd = usd

    def committed_usd_per_hour(self) -> float:
        return self.usd


class _Const:
    def __init__(self, desired: int) -> None:
        self.desired = desired
        self.seen: list[ScalingMetrics] = []

    def observe(self, m: ScalingMetrics) -> None:
        self.seen.append(m)

    def decide(self, now: float) -> ScaleDecision:
        return ScaleDecision(self.desired, f"want {self.desired}")


def test_core_plans_starts_within_the_budget_and_announces_a_refusal_once() -> None:
    spend = Spend(BudgetGuard(10.0))
    committed = _Fixed(4.0)
    spend.controllers.append(committed)
    scaler = _Const(5)
    core = ControllerCore("chat", start=0.0, desired=1, intervals=(2.0, 1.0), autoscaler=scaler, spend=spend,
                          usd_per_replica_hour=2.0)  # fmt: skip
    ready = [ReplicaView("c-0", 0, "ready", ready_since=0.0)]
    first = core.tick(0.0, snap(0.0, 0), ready)
    assert first.plan is not None
    assert (first.plan.scale_event, first.plan.start) == ("1 -> 5: want 5", 3)  # 4 + 3 x 2 = 10 <= 10
    assert first.plan.budget_refusal is not None and "would exceed the $10/h budget" in first.plan.budget_refusal
    assert core.tick(1.0, snap(1.0, 0), ready).plan is None  # not a decision tick
    committed.usd = 10.0  # the engine started the three replicas
    ready += [ReplicaView(f"c-{i}", i, "pending") for i in (1, 2, 3)]
    again = core.tick(2.0, snap(2.0, 0), ready)
    assert again.plan is not None and again.plan.budget_refusal is None  # same spell: not announced again
    assert again.plan.scale_event is None and again.plan.start == 0


def test_core_scale_down_names_victims() -> None:
    core = ControllerCore("chat", start=0.0, desired=3, intervals=(2.0, 1.0), autoscaler=_Const(1))
    rs = [ReplicaView(f"c-{i}", i, "ready", ready_since=float(i)) for i in range(2)] + [
        ReplicaView("c-2", 2, "testing")
    ]
    plan = core.tick(0.0, snap(0.0, 0), rs).plan
    assert plan is not None and [v.name for v in plan.victims] == ["c-2", "c-1"] and plan.start == 0


def test_device_slots_place_with_the_policy_and_release() -> None:
    nodes = [NodeState("cpu0", "cpu", 1, 0.0), NodeState("gpus", "cuda", 4, 80e9, (0, 1))]
    slots = DeviceSlots(nodes, FirstFitDecreasing())
    a = slots.place("cuda", 2)
    assert a is not None and a.stages == (("gpus", (0, 1)),)
    assert slots.place("cuda", 1) is None and slots.free("cuda") == 0
    slots.release(a)
    assert slots.free("cuda") == 2
    best = DeviceSlots([NodeState("a", "cuda", 4, 1.0), NodeState("b", "cuda", 2, 1.0)], BestFit())
    placed = best.place("cuda", 2)
    assert placed is not None and placed.node == "b"
