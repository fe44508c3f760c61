"""Knative Pod Autoscaler (KServe serverless mode), POLICY_REFERENCE.md section 3.

Sources (knative/serving): pkg/autoscaler/scaling/autoscaler.go (Scale: rate limits, panic, excess burst
capacity), pkg/autoscaler/config/config.go (defaults and validation), pkg/reconciler/autoscaling/resources/
target.go (ResolveMetricTarget), pkg/reconciler/autoscaling/kpa/scaler.go (applyBounds, handleScaleToZero),
pkg/autoscaler/aggregation/bucketing.go (1 s buckets averaged over a window). Read at knative/serving 98e5ef9.

Every decision:
  ready = max(1, ready pods), counted at decision time (podCounter.ReadyCount in Scale); `decide` takes the count
      when the engine passes it, else the latest sample's (both engines observe at the instant they decide)
  the metric: concurrency is the time-weighted average since the previous sample (the queue-proxy's
      AverageConcurrentRequests) when the engine supplies `avg_concurrency`, else the sampled `in_flight`
  window averages (TimedFloat64Buckets.WindowAverage): buckets after the last write are not counted, nor are
      buckets before the first write of the current run (a window without writes restarts it); a window with no
      write at all averages 0
  desired_stable = ceil(avg_stable / target), desired_panic = ceil(avg_panic / target), each limited to
      [floor(ready / max_scale_down_rate), ceil(ready * max_scale_up_rate)]
  over = ceil(avg_panic / target) / ready >= panic_threshold (the unclamped panic count, as knative does)
  panic starts when over; every decision that is over re-arms it; it ends at the first decision that is not over
      and comes more than a full stable window after the last one that was
  in panic: desired = max(desired_stable, desired_panic, the largest count of this panic episode) (never decreases)
  scale_down_delay_s > 0: desired = the largest desired of the last scale_down_delay_s seconds
  excess burst capacity = floor(ready_pods * total - target_burst_capacity - avg_panic) (0 when tbc == 0, -1 when
      tbc == -1); the activator is in the request path while desired == 0 or excess < 0
  scale to zero (min_replicas 0 and enable_scale_to_zero): a computed desired of 0 (avg_stable == 0) first puts
      the activator in the path and holds 1 replica; 0 is returned once that has lasted the grace period
  desired is finally clamped to [min_replicas, max_replicas] (max 0 = unbounded)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from policies.autoscaling.types import CommonParams, ScaleDecision, ScalingMetrics, clamp

TARGET_MIN = 0.01
"""knative autoscaling.TargetMin: the smallest per-pod target."""
WINDOW_MIN_S = 6.0
WINDOW_MAX_S = 3600.0
"""knative autoscaling.WindowMin / WindowMax: the stable window's allowed range."""


class KpaParams(CommonParams):
    """Defaults are knative's config-autoscaler (pkg/autoscaler/config/config.go defaultConfig) unless noted.

    metric                          autoscaling.knative.dev/metric: concurrency (default) | rps
    container_concurrency           the revision's containerConcurrency; 0 = unlimited (knative default), then the
                                    per-pod total is container_concurrency_target_default (concurrency metric)
    container_concurrency_target_default   100 (container-concurrency-target-default)
    rps_target_default              200 (requests-per-second-target-default): the per-pod total for rps
    target                          autoscaling.knative.dev/target: replaces the per-pod total (for concurrency,
                                    min(target, container_concurrency) when that is set); utilization still applies
    target_utilization              0.7 (container-concurrency-target-percentage 70): target = total * utilization
    stable_window_s                 60 (stable-window), in [6, 3600]
    panic_window_percentage         10 (panic-window-percentage): panic window = 6 s
    panic_threshold                 2.0 (panic-threshold-percentage 200)
    max_scale_up_rate               1000 (max-scale-up-rate), > 1
    max_scale_down_rate             2.0 (max-scale-down-rate), > 1
    target_burst_capacity           211 (defaultConfig and config/core/configmaps/autoscaler.yaml); 0 = activator
                                    only at zero, -1 = always in path
    scale_to_zero_grace_period_s    30 (scale-to-zero-grace-period), > 0
    enable_scale_to_zero            true (enable-scale-to-zero); also needs min_replicas 0
    scale_down_delay_s              0 (scale-down-delay)
    initial_scale                   1 (initial-scale): the answer before any metrics arrive
    tick_s                          1 (BucketSize): metrics bucket width
    """

    metric: Literal["concurrency", "rps"] = "concurrency"
    container_concurrency: Annotated[int, Field(ge=0, le=1000)] = 0
    container_concurrency_target_default: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 100.0
    rps_target_default: Annotated[float, Field(ge=TARGET_MIN, allow_inf_nan=False)] = 200.0
    target: Annotated[float, Field(ge=TARGET_MIN, allow_inf_nan=False)] | None = None
    target_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.7
    stable_window_s: Annotated[float, Field(ge=WINDOW_MIN_S, le=WINDOW_MAX_S)] = 60.0
    panic_window_percentage: Annotated[float, Field(ge=1.0, le=100.0)] = 10.0
    panic_threshold: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = 2.0
    max_scale_up_rate: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = 1000.0
    max_scale_down_rate: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = 2.0
    target_burst_capacity: Annotated[float, Field(ge=-1.0, allow_inf_nan=False)] = 211.0
    scale_to_zero_grace_period_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 30.0
    enable_scale_to_zero: bool = True
    scale_down_delay_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    initial_scale: Annotated[int, Field(ge=0)] = 1
    tick_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0

    @model_validator(mode="after")
    def _knative_rules(self) -> Self:
        if self.target_burst_capacity < 0 and self.target_burst_capacity != -1:
            raise ValueError("target_burst_capacity must be >= 0 or -1 (unlimited)")
        if self.stable_window_s * self.panic_window_percentage / 100.0 < self.tick_s:
            raise ValueError("the panic window (stable_window_s * panic_window_percentage / 100) must be >= tick_s")
        if self.container_concurrency_target_default * self.target_utilization < TARGET_MIN:
            raise ValueError(f"container_concurrency_target_default * target_utilization must be >= {TARGET_MIN}")
        return self

    def resolve_target(self) -> tuple[float, float]:
        """(target per pod, total per pod) as knative's ResolveMetricTarget computes them."""
        if self.metric == "rps":
            total = self.rps_target_default
        else:
            total = float(self.container_concurrency or self.container_concurrency_target_default)
        if self.target is not None:
            total = self.target
            if self.metric == "concurrency" and self.container_concurrency:
                total = min(self.target, float(self.container_concurrency))
        return max(TARGET_MIN, total * self.target_utilization), total


class _Buckets:
    """knative's TimedFloat64Buckets for one window of n = ceil(window / tick) buckets.

    A write more than a window after the previous one restarts the run (firstWrite = now); writes older than a
    window are ignored. WindowAverage over (now - window, last write], divided by min(buckets since the first
    write, n - buckets since the last write): trailing empty buckets are not counted, gaps inside are (as 0).
    Several samples in one tick are averaged (knative records one scrape per tick); knative sums pods' stats in a
    bucket, odhsim's samples are already totals.
    """

    __slots__ = ("_first", "_last", "_vals", "n", "tick_s")

    def __init__(self, tick_s: float, window_s: float) -> None:
        self.tick_s = tick_s
        self.n = max(1, math.ceil(window_s / tick_s - 1e-9))
        self._vals: dict[int, tuple[float, int]] = {}
        self._first: int | None = None
        self._last: int | None = None

    def _index(self, t: float) -> int:
        return math.floor(t / self.tick_s + 1e-9)

    def record(self, t: float, value: float) -> None:
        i = self._index(t)
        last = self._last
        if last is None or i - last >= self.n:
            self._vals.clear()
            self._first = self._last = i
        elif i > last:
            self._last = i
        elif i <= last - self.n:
            return  # older than a window: knative ignores it
        elif self._first is not None and i < self._first:
            self._first = i
        s, k = self._vals.get(i, (0.0, 0))
        self._vals[i] = (s + value, k + 1)
        oldest = self._last - self.n
        for j in [j for j in self._vals if j <= oldest]:
            del self._vals[j]

    @property
    def empty(self) -> bool:
        return self._last is None

    def average(self, now: float) -> float:
        if self._last is None or self._first is None:
            return 0.0
        cur, last, n = self._index(now), self._last, self.n
        since_last = max(0, cur - last)
        if since_last >= n:
            return 0.0
        buckets = min(last - self._first + 1, n - since_last)
        lo = max(cur, last) - n  # buckets in (lo, last]
        total = 0.0
        for j, (s, k) in self._vals.items():
            if lo < j <= last:
                total += s / k
        return round(total / buckets, 6)


class KnativePodAutoscaler:
    TYPE = "kpa"
    Params = KpaParams
    __slots__ = (
        "_delay",
        "_last",
        "_max_panic_pods",
        "_panic_buckets",
        "_panic_since",
        "_proxy_since",
        "_stable_buckets",
        "p",
        "panic_window_s",
        "target",
        "total",
    )

    def __init__(self, params: KpaParams) -> None:
        self.p = params
        self.target, self.total = params.resolve_target()
        self.panic_window_s = params.stable_window_s * params.panic_window_percentage / 100.0
        self._stable_buckets = _Buckets(params.tick_s, params.stable_window_s)
        self._panic_buckets = _Buckets(params.tick_s, self.panic_window_s)
        self._last: ScalingMetrics | None = None
        self._panic_since: float | None = None  # knative panicTime: last decision that was over the threshold
        self._max_panic_pods = 0
        self._proxy_since: float | None = None  # when a computed desired of 0 first put the activator in path
        self._delay: deque[tuple[float, int]] = deque()

    @classmethod
    def from_params(cls, params: KpaParams, rng: np.random.Generator) -> KnativePodAutoscaler:
        return cls(params)

    @property
    def panicking(self) -> bool:
        return self._panic_since is not None

    def observe(self, m: ScalingMetrics) -> None:
        if self._last is not None and m.now < self._last.now:
            raise ValueError(f"metrics sample at {m.now} is older than the last one at {self._last.now}")
        self._last = m
        if self.p.metric == "rps":
            value = m.arrivals_per_s
        else:
            value = m.avg_concurrency if m.avg_concurrency is not None else m.in_flight
        self._stable_buckets.record(m.now, value)
        self._panic_buckets.record(m.now, value)

    def decide(self, now: float, ready_replicas: int | None = None) -> ScaleDecision:
        """The desired count now; `ready_replicas` is the ready count at this instant (default: the latest
        sample's)."""
        p = self.p
        if self._last is None or self._stable_buckets.empty:
            desired = clamp(p.initial_scale, p.min_replicas, p.max_replicas)
            return ScaleDecision(desired, f"no metrics yet: initial scale {desired}", activator_in_path=desired == 0)
        ready_pods = self._last.ready_replicas if ready_replicas is None else ready_replicas
        ready = float(max(1, ready_pods))
        avg_stable = self._stable_buckets.average(now)
        avg_panic = self._panic_buckets.average(now)

        max_up = math.ceil(p.max_scale_up_rate * ready)
        max_down = math.floor(ready / p.max_scale_down_rate)
        dspc = math.ceil(avg_stable / self.target)
        dppc = math.ceil(avg_panic / self.target)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))

        over = dppc / ready >= p.panic_threshold
        entered = over and self._panic_since is None
        if over:
            self._panic_since = now
        elif self._panic_since is not None and now > self._panic_since + p.stable_window_s:
            self._panic_since = None
            self._max_panic_pods = 0

        if self._panic_since is not None:
            desired = max(desired_stable, desired_panic)
            self._max_panic_pods = max(self._max_panic_pods, desired)
            desired = self._max_panic_pods
            why = "entered panic" if entered else "panic"
            reason = f"{why}: desired_panic {dppc} / ready {ready:g} {'>=' if over else '<'} {p.panic_threshold:g}"
        else:
            desired = desired_stable
            reason = f"stable: avg {avg_stable:.3g} / target {self.target:.3g} -> {dspc}"
            if desired != dspc:
                reason += f" limited to {desired} (ready {ready:g})"

        if p.scale_down_delay_s > 0:
            self._delay.append((now, desired))
            while self._delay and self._delay[0][0] <= now - p.scale_down_delay_s:
                self._delay.popleft()
            delayed = max(d for _, d in self._delay)
            if delayed != desired:
                reason += f"; scale-down delayed: {delayed}"
                desired = delayed

        if p.target_burst_capacity == 0:
            excess = 0.0
        elif p.target_burst_capacity < 0:
            excess = -1.0
        else:
            excess = math.floor(ready_pods * self.total - p.target_burst_capacity - avg_panic)

        bounded = clamp(desired, p.min_replicas, p.max_replicas)
        if bounded != desired:
            reason += f"; bounded to {bounded}"
        in_grace = False
        if bounded == 0:
            if not p.enable_scale_to_zero:
                bounded = 1
                reason += "; scale to zero disabled"
            else:
                if self._proxy_since is None:
                    self._proxy_since = now
                waited = now - self._proxy_since
                if waited < p.scale_to_zero_grace_period_s:
                    bounded = clamp(1, p.min_replicas, p.max_replicas)
                    in_grace = True
                    left = p.scale_to_zero_grace_period_s - waited
                    reason += f"; no traffic: activator in path, scale to zero in {left:g} s"
                else:
                    reason += "; scaled to zero after the grace period"
        else:
            self._proxy_since = None
        in_path = bounded == 0 or excess < 0 or in_grace
        return ScaleDecision(bounded, reason, panic=self._panic_since is not None, activator_in_path=in_path)
