"""`ControllerCore`: one model's controller decisions, fed by an engine adapter with `now` and what it sees.

An adapter calls, in its own time:
- `tick(now, snapshot, replicas)` at every observation (`schedule.next_observe`): the core builds the
  autoscaler's `ScalingMetrics`, observes, and when a decision is due returns a `ScalePlan`;
- `poke()` when the activator holds a request for a model with no ready replica;
- `plan(desired, reason, replicas)` for a scale the adapter is told to make (a rollout retiring a revision);
- `restart.on_failure(...)` when a replica crashes.
It carries the plan out: start `start` replicas, stop `victims` (cancel what serves nothing, drain what is ready),
record `scale_event` and `budget_refusal` as events. The core keeps the desired count it last announced, the
budget's refusal spell and the metrics accumulator; nothing about processes, timers or requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from policies.autoscaling.types import Autoscaler, ScaleDecision, ScalingMetrics
from policies.controlplane.capacity import BudgetGate, Spend
from policies.controlplane.metrics import LoadSnapshot, MetricsAccumulator
from policies.controlplane.restart import RestartPolicy
from policies.controlplane.schedule import TickSchedule
from policies.controlplane.victims import ReplicaView, choose_victims
from policies.decisions import DecisionRecorder, ScaleInputs, ScaleRecord


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """What a scale decision asks of the adapter.

    scale_event     "3 -> 5: <reason>" when the desired count changed (the `scale` event), else None
    start           replicas to start now (already within the budget)
    victims         replicas to stop, in order (starting ones are cancelled, ready ones drained)
    budget_refusal  the budget's reason, at the start of a refusal spell (the `budget` event), else None
    """

    desired: int
    scale_event: str | None = None
    start: int = 0
    victims: tuple[ReplicaView, ...] = ()
    budget_refusal: str | None = None


@dataclass(frozen=True, slots=True)
class TickResult:
    metrics: ScalingMetrics
    decision: ScaleDecision | None = None
    plan: ScalePlan | None = None


class ControllerCore:
    """The decisions of one model's controller (see the module docstring for the calling protocol)."""

    def __init__(
        self,
        name: str,
        *,
        start: float,
        desired: int,
        intervals: tuple[float, float],
        autoscaler: Autoscaler | None = None,
        restart: RestartPolicy | None = None,
        spend: Spend | None = None,
        usd_per_replica_hour: float = 0.0,
        arrivals: int = 0,
    ) -> None:
        self.name = name
        self.autoscaler = autoscaler
        self.schedule = TickSchedule(start, *intervals)
        self.accumulator = MetricsAccumulator(start, arrivals)
        self.restart = restart or RestartPolicy()
        self.spend = spend
        self.usd_per_replica_hour = usd_per_replica_hour
        self.last_desired = desired
        self._gate = BudgetGate()
        self.recorder: DecisionRecorder | None = None  # decision tracing (policies.decisions); None: off

    def begin(self, now: float, arrivals: int) -> None:
        """The autoscaler loop starts at `now` (t = 0, or a canary's start): both grids and the rates start here."""
        old = self.schedule
        self.schedule = TickSchedule(now, old.decide_every_s, old.observe_every_s)
        if old.poked:  # the activator asked before the loop started
            self.schedule.poke()
        self.accumulator = MetricsAccumulator(now, arrivals)

    def poke(self) -> None:
        self.schedule.poke()

    def tick(self, now: float, snapshot: LoadSnapshot, replicas: Sequence[ReplicaView]) -> TickResult:
        """Observe `snapshot`; decide and plan when a decision is due (needs an autoscaler)."""
        metrics = self.accumulator.observe(snapshot)
        if self.autoscaler is None:
            return TickResult(metrics)
        self.autoscaler.observe(metrics)
        if not self.schedule.tick(now):
            return TickResult(metrics)
        decision = self.autoscaler.decide(now)
        if self.recorder is not None:
            self.recorder.record(scale_record(now, self.name, len(replicas), decision, metrics))
        return TickResult(metrics, decision, self.plan(decision.desired, decision.reason, replicas))

    def plan(self, desired: int, reason: str, replicas: Sequence[ReplicaView]) -> ScalePlan:
        """Scale to `desired` from `replicas` (the ones that count: starting, failed, ready; not draining/gone).
        Starts stop at the first the budget refuses; the surplus leaves in `choose_victims` order."""
        event = None
        if desired != self.last_desired:
            event = f"{self.last_desired} -> {desired}: {reason}"
            self.last_desired = desired
        current = len(replicas)
        start, refusal = 0, None
        for _ in range(desired - current):
            check = self._gate.check(
                self.spend, self.usd_per_replica_hour, self.name, start * self.usd_per_replica_hour
            )
            if check.announce is not None:
                refusal = check.announce
            if not check.allowed:
                break
            start += 1
        victims = tuple(choose_victims(replicas, current - desired))
        return ScalePlan(desired, event, start, victims, refusal)


def scale_record(now: float, model: str, current: int, decision: ScaleDecision, m: ScalingMetrics) -> ScaleRecord:
    """An autoscaler decision with the snapshot it was made on (`current`: the replicas that count)."""
    avg = m.avg_concurrency if m.avg_concurrency is not None else math.nan
    inputs = ScaleInputs(m.ready_replicas, m.pending_replicas, m.in_flight, avg, m.arrivals_per_s, m.queue_len,
                         m.kv_usage, m.waiting_per_replica, m.seconds_since_last_request)  # fmt: skip
    return ScaleRecord(now, model, current, decision.desired, decision.reason, decision.panic, inputs)
