"""The gateway core's decision records (policies.decisions), built here so the core's request path stays one
attribute test (`if self.recorder is not None`) longer per hook and nothing else."""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.decisions import (
    BREAKER,
    EJECTION,
    NO_PREFIX,
    NOT_SCORED,
    UNHEALTHY,
    AdmissionRecord,
    Candidate,
    DecisionRecorder,
    QueueRecord,
    RetryRecord,
    RouteRecord,
    Transition,
)
from policies.flowcontrol.priority import PRIORITY_CLASSES
from policies.flowcontrol.types import QueuedRequest
from policies.gateway.route import RouteState
from policies.gateway.types import Ticket
from policies.routing.types import EndpointState, RouteRequest, RoutingDecision


def class_name(priority: int) -> str:
    """The priority class of a ticket's class index (critical, high, normal, low)."""
    return PRIORITY_CLASSES[priority] if 0 <= priority < len(PRIORITY_CLASSES) else str(priority)


def record_route(
    rec: DecisionRecorder, now: float, route: RouteState, t: Ticket, rr: RouteRequest, states: Sequence[EndpointState]
) -> RoutingDecision:
    """Pick as `route.router.pick` would (the same pick: see SchedulerProfile.explain_pick) and record why. A
    router that is not a filter/scorer/picker pipeline is recorded with its candidates' state only."""
    explain = getattr(route.router, "explain_pick", None)
    if explain is not None:
        decision, scorers, candidates = explain(now, rr, states)
    else:
        decision, scorers = route.router.pick(now, rr, states), ()
        candidates = tuple(
            Candidate(s.name, NOT_SCORED if s.healthy else UNHEALTHY, s.waiting, s.running, s.kv_usage,
                      now - s.scraped_at, NO_PREFIX, (), math.nan)
            for s in states
        )  # fmt: skip
    pick = decision.endpoint or ""
    age = math.nan
    if pick:
        for c in candidates:
            if c.name == pick:
                age = c.metrics_age_s
                break
    rec.record(
        RouteRecord(now, t.id, route.name, t.attempt + 1, class_name(t.priority), pick, decision.reason, age, scorers,
                    candidates)
    )  # fmt: skip
    return decision


def record_admission(
    rec: DecisionRecorder, now: float, t: Ticket, route: RouteState, admitted: bool, reason: str, saturation: float
) -> None:
    if rec.wants(t.id):
        queued = len(route.flow.queue) if route.flow is not None else 0
        rec.record(AdmissionRecord(now, t.id, route.name, class_name(t.priority), admitted, reason, saturation, queued))


def record_queue(rec: DecisionRecorder, now: float, route: RouteState, item: QueuedRequest, action: str) -> None:
    if rec.wants(item.request_id):
        queued = len(route.flow.queue) if route.flow is not None else 0
        waited = now - item.enqueued_at
        rec.record(QueueRecord(now, item.request_id, route.name, item.priority_class, action, waited, queued))


def record_fifo_pop(rec: DecisionRecorder, now: float, route: RouteState, t: Ticket) -> None:
    """The head of a FIFO (no flow control) leaves for a replica; it entered at arrival (the FIFO keeps no time of
    its own), so `waited_s` counts from the request's arrival at the gateway."""
    if rec.wants(t.id):
        rec.record(QueueRecord(now, t.id, route.name, class_name(t.priority), "pop", now - t.arrival,
                               len(route.fifo) - 1))  # fmt: skip


def record_arrival_fallback(
    rec: DecisionRecorder, now: float, t: Ticket, model: RouteState, target: RouteState, why: str
) -> None:
    """An arrival sent to its model's fallback before any attempt (the breaker is open, or the model cannot serve)."""
    if rec.wants(t.id):
        rec.record(RetryRecord(now, t.id, model.name, t.attempt, "fallback", why, target.name, 0.0, why))


def record_retry(
    rec: DecisionRecorder, now: float, t: Ticket, route: RouteState, action: str, failure: str, target: str,
    backoff_s: float, reason: str,
) -> None:  # fmt: skip
    if rec.wants(t.id):
        rec.record(RetryRecord(now, t.id, route.name, t.attempt, action, failure, target, backoff_s, reason))


def transition_records(models: Sequence[RouteState]) -> list[Transition]:
    """Every breaker state change and outlier ejection / return so far, in time order (the breakers and detectors
    keep their own logs of them: recorded once, at the end, rather than tested for on every request)."""
    out: list[Transition] = []
    for model in models:
        if model.breaker is not None:
            for at, old, new in model.breaker.transitions:
                out.append(Transition(at, BREAKER, model.name, "", old, new, f"{old} -> {new}"))
        if model.outlier is not None:
            for at, host, what, reason in model.outlier.events:
                old, new = ("healthy", "ejected") if what == "ejected" else ("ejected", "healthy")
                out.append(Transition(at, EJECTION, model.name, host, old, new, reason))
    out.sort(key=lambda r: r.time_s)
    return out
