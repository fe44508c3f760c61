"""AIBrix Advanced Pod Autoscaler (APA), POLICY_REFERENCE.md section 3.

Sources (vllm-project/aibrix): pkg/controller/podautoscaler/algorithm/apa.go (computeTargetReplicas),
pkg/controller/podautoscaler/context/context.go (NewBaseScalingContext defaults).

  N = ready + pending replicas (the scale target's replica count), r = current metric per pod / target_value
  r > 1 + up_fluctuation_tolerance:   min(ceil(N * r), ceil(N * max_scale_up_rate))
  r < 1 - down_fluctuation_tolerance: max(ceil(N * r), floor(N / max_scale_down_rate))
  else N
Scale-down stabilization (scale_down_cooldown_s, 300 s): a recommendation below N is replaced by the largest
recommendation of the last 300 s (capped at N), Kubernetes-HPA style: replicas are removed only when every
recommendation of the last 5 minutes asked for fewer. Scale-up cooldown is 0 (AIBrix default): immediate.
At zero ready replicas the per-pod metric is undefined: any traffic gives max(N, 1), none holds N.
The metric per pod is averaged over `window_s` of samples (plain mean).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from policies.autoscaling.types import CommonParams, SampleWindow, ScaleDecision, ScalingMetrics, clamp

ApaMetric = Literal["in_flight", "queue", "waiting", "kv_usage", "rps"]


def per_pod(m: ScalingMetrics, metric: ApaMetric) -> float:
    """The metric's per-replica value in one sample (0 when no replica is ready)."""
    if metric == "kv_usage":
        return m.kv_usage
    if metric == "waiting":
        return m.waiting_per_replica
    if m.ready_replicas == 0:
        return 0.0
    total = {"in_flight": m.in_flight, "queue": float(m.queue_len), "rps": m.arrivals_per_s}[metric]
    return total / m.ready_replicas


class ApaParams(CommonParams):
    """AIBrix defaults: tolerances 0.1, max scale-up rate 2, max scale-down rate 2, scale-down cooldown 300 s,
    scale-up cooldown 0. AIBrix has no default metric or target (the PodAutoscaler names them): ours are in-flight
    requests per replica with target 10. window_s (60) is ours: AIBrix aggregates over its own window."""

    metric: ApaMetric = "in_flight"
    target_value: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 10.0
    up_fluctuation_tolerance: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.1
    down_fluctuation_tolerance: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    max_scale_up_rate: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = 2.0
    max_scale_down_rate: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = 2.0
    scale_down_cooldown_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 300.0
    window_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 60.0


class AibrixApaAutoscaler:
    TYPE = "aibrix-apa"
    Params = ApaParams
    __slots__ = ("_history", "_last", "_window", "p")

    def __init__(self, params: ApaParams) -> None:
        self.p = params
        self._window = SampleWindow(params.window_s)
        self._last: ScalingMetrics | None = None
        self._history: deque[tuple[float, int]] = deque()

    @classmethod
    def from_params(cls, params: ApaParams, rng: np.random.Generator) -> AibrixApaAutoscaler:
        return cls(params)

    def observe(self, m: ScalingMetrics) -> None:
        self._window.add(m)
        self._last = m

    def recommend(self, n: int, use_per_pod: float) -> int:
        """apa.go computeTargetReplicas for N = n (n >= 1)."""
        p = self.p
        r = use_per_pod / p.target_value
        if r > 1 + p.up_fluctuation_tolerance:
            return min(math.ceil(n * r), math.ceil(p.max_scale_up_rate * n))
        if r < 1 - p.down_fluctuation_tolerance:
            return max(math.ceil(n * r), math.floor(n / p.max_scale_down_rate))
        return n

    def decide(self, now: float) -> ScaleDecision:
        p = self.p
        m = self._last
        if m is None:
            desired = clamp(1, p.min_replicas, p.max_replicas)
            return ScaleDecision(desired, "no metrics yet")
        n = m.replicas
        if m.ready_replicas == 0:
            rec = max(n, 1) if m.has_traffic else n
            reason = "no ready replica: " + ("traffic, at least 1" if m.has_traffic else "no traffic, hold")
        else:
            use = self._window.mean(now, lambda s: per_pod(s, p.metric))
            rec = self.recommend(n, use)
            ratio = use / p.target_value
            reason = f"{p.metric} per pod {use:.3g} / target {p.target_value:g} = {ratio:.3g}: {n} -> {rec}"
        self._history.append((now, rec))
        while self._history and self._history[0][0] <= now - p.scale_down_cooldown_s:
            self._history.popleft()
        desired = rec
        if rec < n:
            desired = min(n, max(r for _, r in self._history))
            if desired != rec:
                reason += f"; scale-down stabilized at {desired} ({p.scale_down_cooldown_s:g} s window)"
        bounded = clamp(desired, p.min_replicas, p.max_replicas)
        if bounded != desired:
            reason += f"; bounded to {bounded}"
        return ScaleDecision(bounded, reason)
