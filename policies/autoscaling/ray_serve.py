"""Ray Serve's default autoscaling policy (replica queue length), POLICY_REFERENCE.md section 3.

Source (ray-project/ray): python/ray/serve/autoscaling_policy.py (replica_queue_length_autoscaling_policy,
_calculate_desired_num_replicas) and python/ray/serve/config.py (AutoscalingConfig defaults).

  total = mean total ongoing requests over look_back_period_s (30 s)
  desired = ceil(current * (1 + (total / (target * current) - 1) * factor)), factor = upscaling_factor when the
      ratio >= 1 else downscaling_factor; with both factors 1 (the default) this is ceil(total / target)
  current is the policy's own current target (Ray's curr_target_num_replicas), starting at the replicas requested
      at the first decision (ready + pending), bounded.
  desired > current must hold for upscale_delay_s (30 s) before it is applied; desired < current must hold for
      downscale_delay_s (600 s); a change of direction or desired == current restarts the clock (Ray's decision
      counter, in continuous time). The count applied is the one computed at that decision.
  current == 0 and any ongoing request: 1 at once (Ray scales from zero without waiting).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.autoscaling.types import CommonParams, SampleWindow, ScaleDecision, ScalingMetrics, clamp


class RayServeParams(CommonParams):
    """Ray Serve AutoscalingConfig defaults: target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s 600,
    look_back_period_s 30, upscaling/downscaling factors 1 (None in Ray). Ray's own min/max defaults are 1/1;
    ours are the common 1/10."""

    target_ongoing_requests: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 2.0
    upscale_delay_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 30.0
    downscale_delay_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 600.0
    look_back_period_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 30.0
    upscaling_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    downscaling_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0


class RayServeAutoscaler:
    TYPE = "ray-serve"
    Params = RayServeParams
    __slots__ = ("_current", "_direction", "_last", "_since", "_window", "p")

    def __init__(self, params: RayServeParams) -> None:
        self.p = params
        self._window = SampleWindow(params.look_back_period_s)
        self._last: ScalingMetrics | None = None
        self._current: int | None = None
        self._direction = 0  # +1 upscale pending, -1 downscale pending, 0 none
        self._since = 0.0

    @classmethod
    def from_params(cls, params: RayServeParams, rng: np.random.Generator) -> RayServeAutoscaler:
        return cls(params)

    def observe(self, m: ScalingMetrics) -> None:
        self._window.add(m)
        self._last = m

    def desired_for(self, current: int, total: float) -> int:
        p = self.p
        if current == 0:
            return math.ceil(total / p.target_ongoing_requests)
        ratio = total / (p.target_ongoing_requests * current)
        factor = p.upscaling_factor if ratio >= 1 else p.downscaling_factor
        return max(0, math.ceil(current * (1 + (ratio - 1) * factor)))

    def decide(self, now: float) -> ScaleDecision:
        p = self.p
        m = self._last
        if m is None:
            desired = clamp(p.min_replicas, p.min_replicas, p.max_replicas)
            return ScaleDecision(desired, "no metrics yet: min_replicas")
        if self._current is None:
            self._current = clamp(m.replicas, p.min_replicas, p.max_replicas)
        current = self._current
        total = self._window.mean(now, lambda s: s.in_flight)
        if current == 0:
            self._direction = 0
            if total > 0 or m.has_traffic:
                self._current = clamp(1, p.min_replicas, p.max_replicas)
                return ScaleDecision(self._current, "requests at zero replicas: 0 -> 1 at once")
            return ScaleDecision(current, "zero replicas, no requests")
        want = clamp(self.desired_for(current, total), p.min_replicas, p.max_replicas)
        head = f"ongoing {total:.3g} / target {p.target_ongoing_requests:g} -> {want}"
        direction = (want > current) - (want < current)
        if direction == 0:
            self._direction = 0
            return ScaleDecision(current, f"{head}: hold {current}")
        if direction != self._direction:
            self._direction = direction
            self._since = now
        delay = p.upscale_delay_s if direction > 0 else p.downscale_delay_s
        held = now - self._since
        verb = "upscale" if direction > 0 else "downscale"
        if held >= delay:
            self._current = want
            self._direction = 0
            return ScaleDecision(want, f"{head}: {verb} after {held:g} s")
        return ScaleDecision(current, f"{head}: waiting {delay - held:g} s more to {verb}")
