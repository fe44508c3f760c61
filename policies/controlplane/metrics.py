"""Autoscaler inputs from one snapshot type, the same arithmetic in both engines.

An engine reads its raw counters into a `LoadSnapshot` (cumulative arrivals, requests in flight now, optionally
the cumulative in-flight integral) and hands it to `MetricsAccumulator.observe`, which returns the
`ScalingMetrics` the autoscaler sees. Rates are divided by the time that actually elapsed since the previous
observation (a late tick, or a first observation right after start, is not divided by the nominal interval), and
`avg_concurrency` is the in-flight integral's growth over that same time (Knative's queue-proxy reports
AverageConcurrentRequests, not a point sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.autoscaling.types import ScalingMetrics


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """One read of an engine's counters for one model (revision) at `now`.

    arrivals            requests that arrived since the route was created (cumulative, cache hits included)
    in_flight           requests at replicas + buffered at the gateway/activator now
    queued              requests waiting at the gateway + in the ready replicas' own queues
    waiting             of those, the ones waiting inside ready replicas (vllm:num_requests_waiting summed)
    kv_usage_sum        KV-cache usage summed over ready replicas (each in [0, 1])
    serving             replicas whose metrics are in the sums above (the ready ones)
    ready, pending      replica counts the controller reports (ready; starting)
    last_arrival_s      time of the latest arrival; NaN when nothing arrived yet
    in_flight_s         cumulative integral of in_flight over time (request-seconds), when the engine keeps one
    """

    now: float
    arrivals: int
    in_flight: float
    queued: int
    ready: int
    pending: int
    waiting: float = 0.0
    kv_usage_sum: float = 0.0
    serving: int = 0
    last_arrival_s: float = math.nan
    in_flight_s: float | None = None


class MetricsAccumulator:
    """Turns successive snapshots into `ScalingMetrics`; remembers the previous observation's time and counters."""

    __slots__ = ("_arrivals", "_in_flight_s", "_since")

    def __init__(self, start: float, arrivals: int = 0, in_flight_s: float | None = None) -> None:
        self._since = start
        self._arrivals = arrivals
        self._in_flight_s = in_flight_s

    def observe(self, s: LoadSnapshot) -> ScalingMetrics:
        dt = s.now - self._since
        rate = (s.arrivals - self._arrivals) / dt if dt > 0 else 0.0
        avg: float | None = None
        if s.in_flight_s is not None:
            before = self._in_flight_s if self._in_flight_s is not None else s.in_flight_s
            avg = (s.in_flight_s - before) / dt if dt > 0 else s.in_flight
            self._in_flight_s = s.in_flight_s
        self._since, self._arrivals = s.now, s.arrivals
        last = s.last_arrival_s
        return ScalingMetrics(
            now=s.now,
            ready_replicas=s.ready,
            pending_replicas=s.pending,
            in_flight=float(s.in_flight),
            arrivals_per_s=max(0.0, rate),
            queue_len=int(s.queued),
            kv_usage=min(1.0, max(0.0, s.kv_usage_sum / s.serving)) if s.serving else 0.0,
            waiting_per_replica=s.waiting / s.serving if s.serving else 0.0,
            seconds_since_last_request=max(0.0, s.now - last) if last == last else math.inf,
            avg_concurrency=None if avg is None else max(0.0, avg),
        )


class ConcurrencyIntegral:
    """The in-flight integral an engine can keep with one call per change: `change(now, delta)` when a request
    enters (+1) or leaves (-1) the counted set; `value(now)` is the request-seconds so far."""

    __slots__ = ("_area", "_level", "_since")

    def __init__(self, start: float = 0.0) -> None:
        self._area = 0.0
        self._level = 0
        self._since = start

    def change(self, now: float, delta: int) -> None:
        if now > self._since:
            self._area += self._level * (now - self._since)
            self._since = now
        self._level = max(0, self._level + delta)

    @property
    def level(self) -> int:
        return self._level

    def value(self, now: float) -> float:
        return self._area + self._level * max(0.0, now - self._since)
