"""llm-d workload variant autoscaler, saturation (capacity) analyzer, for one variant: POLICY_REFERENCE.md section 3.

Source: llm-d-incubation/workload-variant-autoscaler docs/saturation-analyzer.md and
docs/capacity-scaling-config.md (thresholds, spare-capacity triggers, scale-down safety simulation).

WVA looks at every replica's kv usage and waiting queue (max_over_time over 1 minute). The simulator's sample
carries pool means, so every ready replica is taken to be at the pool mean (a homogeneous pool); the peak of those
means over `window_s` (60 s, WVA's [1m]) is used:
  saturated: kv >= kv_cache_threshold (0.8) or waiting >= queue_length_threshold (5) -> all N replicas saturated
  spare_kv = kv_cache_threshold - kv, spare_queue = queue_length_threshold - waiting (0 when saturated)
  scale up (ready + 1) when spare_kv < kv_spare_trigger (0.1) or spare_queue < queue_spare_trigger (3)
  scale down (ready - 1) when it is safe: N >= 2 and, with the load of N replicas spread over N - 1,
      kv_cache_threshold - kv * N / (N - 1) >= kv_spare_trigger and
      queue_length_threshold - waiting * N / (N - 1) >= queue_spare_trigger
  else hold at ready.
Replicas still starting (pending > 0): no decision, hold ready + pending (WVA skips variants with pods starting).
No ready replica: 1 when there is traffic, else min_replicas. Scale to zero (min_replicas 0) only after
scale_to_zero_idle_s without a request (None: never; WVA's scale-to-zero is a separate feature).
Single variant only: the cheapest / most expensive variant choice needs a multi-variant pool.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from policies.autoscaling.types import CommonParams, SampleWindow, ScaleDecision, ScalingMetrics, clamp


class LlmdSaturationParams(CommonParams):
    """WVA capacity-scaling-config defaults: kvCacheThreshold 0.80, queueLengthThreshold 5, kvSpareTrigger 0.1,
    queueSpareTrigger 3; metrics are max_over_time[1m]."""

    kv_cache_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    queue_length_threshold: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 5.0
    kv_spare_trigger: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    queue_spare_trigger: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 3.0
    window_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 60.0
    scale_to_zero_idle_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None


class LlmdSaturationAutoscaler:
    TYPE = "llm-d-saturation"
    Params = LlmdSaturationParams
    __slots__ = ("_last", "_window", "p")

    def __init__(self, params: LlmdSaturationParams) -> None:
        self.p = params
        self._window = SampleWindow(params.window_s)
        self._last: ScalingMetrics | None = None

    @classmethod
    def from_params(cls, params: LlmdSaturationParams, rng: np.random.Generator) -> LlmdSaturationAutoscaler:
        return cls(params)

    def observe(self, m: ScalingMetrics) -> None:
        self._window.add(m)
        self._last = m

    def analyze(self, n: int, kv: float, waiting: float) -> tuple[int, str]:
        """(+1 / -1 / 0, why) for n ready replicas all at (kv, waiting)."""
        p = self.p
        saturated = kv >= p.kv_cache_threshold or waiting >= p.queue_length_threshold
        spare_kv = 0.0 if saturated else p.kv_cache_threshold - kv
        spare_q = 0.0 if saturated else p.queue_length_threshold - waiting
        state = f"kv {kv:.3g} waiting {waiting:.3g}"
        if saturated:
            return 1, f"{state}: all {n} replicas saturated"
        if spare_kv < p.kv_spare_trigger or spare_q < p.queue_spare_trigger:
            return 1, f"{state}: spare kv {spare_kv:.3g} / queue {spare_q:.3g} below trigger"
        if n >= 2:
            spread = n / (n - 1)
            left_kv = p.kv_cache_threshold - kv * spread
            left_q = p.queue_length_threshold - waiting * spread
            if left_kv >= p.kv_spare_trigger and left_q >= p.queue_spare_trigger:
                return -1, f"{state}: safe to remove one (spare after kv {left_kv:.3g} / queue {left_q:.3g})"
        return 0, f"{state}: enough spare capacity"

    def decide(self, now: float) -> ScaleDecision:
        p = self.p
        m = self._last
        if m is None:
            desired = clamp(1, p.min_replicas, p.max_replicas)
            return ScaleDecision(desired, "no metrics yet")
        idle_for = 0.0 if m.has_traffic else m.seconds_since_last_request + max(0.0, now - m.now)
        if p.scale_to_zero_idle_s is not None and p.min_replicas == 0 and idle_for >= p.scale_to_zero_idle_s:
            desired, reason = 0, f"idle {idle_for:g} s: scale to zero"
        elif m.pending_replicas > 0:
            desired, reason = m.replicas, f"{m.pending_replicas} replica(s) starting: hold"
        elif m.ready_replicas == 0:
            desired = 1 if m.has_traffic else p.min_replicas
            reason = "no ready replica: " + ("traffic, start 1" if m.has_traffic else "no traffic")
        else:
            kv = self._window.max(now, lambda s: s.kv_usage)
            waiting = self._window.max(now, lambda s: s.waiting_per_replica)
            step, reason = self.analyze(m.ready_replicas, kv, waiting)
            desired = m.ready_replicas + step
        bounded = clamp(desired, p.min_replicas, p.max_replicas)
        if bounded != desired:
            reason += f"; bounded to {bounded}"
        return ScaleDecision(bounded, reason)
