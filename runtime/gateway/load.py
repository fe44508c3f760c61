"""What the live gateway's counters say about a model's load, read for the controller (a LoadSnapshot for the
controller core; ScalingMetrics for an autoscaler read directly) and for /metrics (the per-model gauges). Nothing here
changes a route, except that `scaling_metrics_of` moves its arrival-rate window on."""

from __future__ import annotations

import math
from collections.abc import Mapping

from policies.autoscaling.types import ScalingMetrics
from policies.controlplane.metrics import LoadSnapshot
from runtime.gateway.metrics import breaker_value
from runtime.gateway.route import ModelRoute


def snapshot_of(route: ModelRoute, now: float, ready: int, pending: int) -> LoadSnapshot:
    """The model's raw load counters for the controller core (policies.controlplane), which turns successive
    snapshots into the autoscaler's ScalingMetrics (rates over the time that elapsed)."""
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
        in_flight_s=None if route.concurrency is None else route.concurrency.value(now),
    )


def scaling_metrics_of(route: ModelRoute, now: float, ready: int, pending: int) -> ScalingMetrics:
    """What the model's autoscaler observes now; arrivals_per_s counts arrivals since the previous call (which is
    why this one moves the route's rate window on)."""
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


def gauges_of(routes: Mapping[str, ModelRoute], now: float) -> dict[str, dict[str, float]]:
    """The per-model gauges of /metrics, by model name."""
    out: dict[str, dict[str, float]] = {}
    for name, r in routes.items():
        out[name] = {
            "odhsim_gateway_queue_length": float(r.queued()),
            "odhsim_gateway_breaker_open": breaker_value(r.breaker_state(now)),
            "odhsim_gateway_replicas_ready": float(len(r.ready)),
            "odhsim_gateway_replicas_draining": float(len(r.upstreams) - len(r.ready)),
            "odhsim_gateway_replicas_ejected": float(len(r.ejected(now) & set(r.upstreams))),
            "odhsim_gateway_in_flight": float(r.in_flight()),
        }
    return out
