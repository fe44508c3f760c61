"""The gateway's own Prometheus metrics, in a registry per gateway (two gateways in one process stay apart).

Counters are incremented on the request path; gauges (queue length, breaker state, replicas) are read from the
gateway's state when /metrics is scraped, so they are never out of date. Label values are bounded: `model` is a
configured model name or "unknown", `reason` a short slug (the detailed text goes to the client, not to a label).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BREAKER_VALUE = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


class _StateCollector(Collector):
    """Gauges computed at scrape time from `snapshot()`: {model: {gauge_name: value}}."""

    def __init__(self, snapshot: Callable[[], dict[str, dict[str, float]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._snapshot()
        docs = {
            "odhsim_gateway_queue_length": "Requests waiting at the gateway (flow-control queue, FIFO, retries).",
            "odhsim_gateway_breaker_open": "Circuit breaker per model: 0 closed, 0.5 half-open, 1 open.",
            "odhsim_gateway_replicas_ready": "Replicas taking new requests.",
            "odhsim_gateway_replicas_draining": "Replicas finishing what they hold.",
            "odhsim_gateway_replicas_ejected": "Replicas ejected by outlier detection.",
            "odhsim_gateway_in_flight": "Requests outstanding at the model's replicas.",
        }
        for name, doc in docs.items():
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for model, values in rows.items():
                family.add_metric([model], values.get(name, 0.0))
            yield family


@runtime_checkable
class TierHealth(Protocol):
    """What /metrics reads of the shared cache tier (runtime.gateway.shared_tier.RedisSharedTier)."""

    up: bool
    errors: int
    skipped: int


class _TierCollector(Collector):
    """The shared tier's health at scrape time: an outage of Redis is otherwise invisible (requests still succeed
    from the local tier and the replicas)."""

    def __init__(self, tier: Callable[[], object]) -> None:
        self._tier = tier

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        tier = self._tier()
        if not isinstance(tier, TierHealth):  # no shared tier, or the in-memory one (it cannot fail)
            return
        yield GaugeMetricFamily(
            "odhsim_gateway_shared_tier_up", "The shared cache tier (Redis) answered its last call: 1, else 0.",
            value=1.0 if tier.up else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "odhsim_gateway_shared_tier_errors", "Calls to the shared cache tier that failed.", value=tier.errors
        )
        yield CounterMetricFamily(
            "odhsim_gateway_shared_tier_skipped",
            "Calls not sent to the shared cache tier while it was marked down (its back-off).",
            value=tier.skipped,
        )


class GatewayMetrics:
    def __init__(
        self,
        snapshot: Callable[[], dict[str, dict[str, float]]],
        shared_tier: Callable[[], object] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "odhsim_gateway_requests",
            "Requests by final outcome: HTTP status and a reason slug.",
            ["model", "status", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "odhsim_gateway_retries",
            "Attempts retried on another replica or the fallback.",
            ["model"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "odhsim_gateway_cache_hits",
            "Requests answered from the response cache.",
            ["model", "tier"],
            registry=self.registry,
        )
        self.upstream_failures = Counter(
            "odhsim_gateway_upstream_failures",
            "Failed attempts at a replica, by failure kind.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.transport_refusals = Counter(
            "odhsim_gateway_transport_refusals",
            "Requests refused by the HTTP layer before the app saw it (431 head too big, 408 too slow, 400 bad HTTP).",
            ["status", "reason"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "odhsim_gateway_event_loop_lag_seconds",
            "How late the gateway's event loop ran, measured every 50 ms (a busy or blocked loop delays everything).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.loop_lag_last = Gauge(
            "odhsim_gateway_event_loop_lag_last_seconds", "The event loop's latest lag.", registry=self.registry
        )
        self.attempts_excused = Counter(
            "odhsim_gateway_attempts_excused",
            "Attempts that timed out or failed to connect while the gateway's own loop stalled (not held against "
            "the replica).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(snapshot))
        if shared_tier is not None:
            self.registry.register(_TierCollector(shared_tier))

    def count(self, model: str, status: int, reason: str) -> None:
        self.requests.labels(model, str(status), reason).inc()

    def observe_loop_lag(self, lag_s: float) -> None:
        self.loop_lag.observe(lag_s)
        self.loop_lag_last.set(lag_s)

    def transport_refused(self, status: int, reason: str) -> None:
        self.transport_refusals.labels(str(status), reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, Any]) -> float:
        """One sample's current value (0 when absent); for tests and the controller."""
        got = self.registry.get_sample_value(name, {k: str(v) for k, v in labels.items()})
        return 0.0 if got is None else got


def breaker_value(state: str | None) -> float:
    return 0.0 if state is None else _BREAKER_VALUE.get(state, 0.0)
