"""Inputs, decisions, the autoscaler interface and the parameters every autoscaler shares.

The engine samples `ScalingMetrics` on the autoscaler's own metrics interval (never perfect knowledge) and feeds
them with `observe`; every decision interval it calls `decide(now)` and applies `ScaleDecision.desired`.
`now` must not decrease from call to call; an engine that observes and decides at the same instant observes first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Protocol, Self, runtime_checkable

from pydantic import Field, model_validator

from policies.registry import PolicyParams

AUTOSCALER_KIND = "autoscaler"


@dataclass(frozen=True, slots=True)
class ScalingMetrics:
    """One metrics sample, as the autoscaler's scraper sees it.

    ready_replicas               replicas serving
    pending_replicas             replicas starting (pending / downloading / loading / testing)
    in_flight                    requests in flight at the replicas + buffered at the gateway/activator (concurrency)
    avg_concurrency              the same, averaged over time since the previous sample (Knative's queue-proxy
                                 reports AverageConcurrentRequests); None when the engine only samples in_flight
    arrivals_per_s               observed request rate over the last sample interval
    queue_len                    requests waiting (gateway + replica queues)
    kv_usage                     mean KV-cache usage over ready replicas, in [0, 1]
    waiting_per_replica          mean vllm:num_requests_waiting over ready replicas
    seconds_since_last_request   for idle / scale-to-zero rules (math.inf if nothing ever arrived)
    """

    now: float
    ready_replicas: int
    pending_replicas: int = 0
    in_flight: float = 0.0
    arrivals_per_s: float = 0.0
    queue_len: int = 0
    kv_usage: float = 0.0
    waiting_per_replica: float = 0.0
    seconds_since_last_request: float = math.inf
    avg_concurrency: float | None = None

    def __post_init__(self) -> None:
        if self.ready_replicas < 0 or self.pending_replicas < 0:
            raise ValueError("replica counts must be >= 0")
        if self.in_flight < 0 or self.arrivals_per_s < 0 or self.queue_len < 0 or self.waiting_per_replica < 0:
            raise ValueError("load metrics must be >= 0")
        if not 0.0 <= self.kv_usage <= 1.0:
            raise ValueError(f"kv_usage must be in [0, 1], got {self.kv_usage}")
        if self.avg_concurrency is not None and not self.avg_concurrency >= 0:
            raise ValueError("avg_concurrency must be >= 0")
        if self.seconds_since_last_request < 0:
            raise ValueError("seconds_since_last_request must be >= 0")

    @property
    def replicas(self) -> int:
        """Replicas requested so far: ready + starting."""
        return self.ready_replicas + self.pending_replicas

    @property
    def has_traffic(self) -> bool:
        """Anything in flight, waiting or arriving."""
        return self.in_flight > 0 or self.queue_len > 0 or self.arrivals_per_s > 0


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """desired is always within [min_replicas, max_replicas] (max 0 = unbounded).

    reason              human-readable, for events.parquet ("panic: desired_panic 12 / ready 4 >= 2.0")
    panic               KPA panic mode
    activator_in_path   KPA: the activator buffers requests (desired == 0, excess burst capacity < 0, or the
                        revision is inactive and waiting out the scale-to-zero grace period)
    """

    desired: int
    reason: str
    panic: bool = False
    activator_in_path: bool = False

    def __post_init__(self) -> None:
        if self.desired < 0:
            raise ValueError(f"desired must be >= 0, got {self.desired}")


@runtime_checkable
class Autoscaler(Protocol):
    def observe(self, m: ScalingMetrics) -> None:
        """Feed one metrics sample (KPA: one 1 s bucket per sample)."""
        ...

    def decide(self, now: float) -> ScaleDecision:
        """The desired replica count now (called every decision interval; KPA: 2 s)."""
        ...


class CommonParams(PolicyParams):
    """Shared by every autoscaler.

    min_replicas   KServe minReplicas: default 1; 0 allows scale to zero
    max_replicas   KServe maxReplicas / Knative max-scale: 0 means unbounded (Knative's `max-scale: 0`)
    """

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=0)] = 10

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self


def clamp(n: int, min_replicas: int, max_replicas: int) -> int:
    """n bounded to [min_replicas, max_replicas]; max_replicas 0 is unbounded (Knative's applyBounds)."""
    n = max(n, min_replicas)
    if max_replicas and n > max_replicas:
        n = max_replicas
    return n


class SampleWindow:
    """The metrics samples of the last `window_s` seconds (a sample at t is kept while t > now - window_s)."""

    __slots__ = ("_samples", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[ScalingMetrics] = deque()

    def add(self, m: ScalingMetrics) -> None:
        if self._samples and m.now < self._samples[-1].now:
            raise ValueError(f"metrics sample at {m.now} is older than the last one at {self._samples[-1].now}")
        self._samples.append(m)

    def prune(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._samples and self._samples[0].now <= cutoff:
            self._samples.popleft()

    def __iter__(self) -> Iterator[ScalingMetrics]:
        return iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def latest(self) -> ScalingMetrics | None:
        return self._samples[-1] if self._samples else None

    def mean(self, now: float, value: Callable[[ScalingMetrics], float]) -> float:
        """Plain mean of value(sample) over the window (0.0 when empty)."""
        self.prune(now)
        if not self._samples:
            return 0.0
        return math.fsum(value(m) for m in self._samples) / len(self._samples)

    def max(self, now: float, value: Callable[[ScalingMetrics], float]) -> float:
        self.prune(now)
        return max((value(m) for m in self._samples), default=0.0)
