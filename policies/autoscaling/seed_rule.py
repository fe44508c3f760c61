"""The seed document's rule (POLICY_REFERENCE.md section 3, "Others"): a naive queue-threshold baseline.

Every decision, with current = ready + pending replicas (what has been asked for so far):
  - at zero replicas with any traffic (in flight, waiting or arriving): 1 (cold start; nothing else wakes it)
  - queue_len > queue_threshold (50): current + 1 (one replica per decision, not ceil(queue / 50): the seed says
    "scale up", and a step per decision interval is the plain reading)
  - idle (no request for idle_s, 5 min, and nothing in flight or waiting) and min_replicas 0: 0 (scale to zero)
  - idle and min_replicas > 0: current - 1, at most one step per idle_s (the idle clock restarts after a step)
  - otherwise current
then clamped to [min_replicas, max_replicas]. The latest sample decides (no averaging).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from policies.autoscaling.types import CommonParams, ScaleDecision, ScalingMetrics, clamp


class SeedRuleParams(CommonParams):
    queue_threshold: Annotated[int, Field(ge=0)] = 50
    idle_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 300.0


class SeedRuleAutoscaler:
    TYPE = "seed-rule"
    Params = SeedRuleParams
    __slots__ = ("_last", "_last_down", "p")

    def __init__(self, params: SeedRuleParams) -> None:
        self.p = params
        self._last: ScalingMetrics | None = None
        self._last_down: float | None = None

    @classmethod
    def from_params(cls, params: SeedRuleParams, rng: np.random.Generator) -> SeedRuleAutoscaler:
        return cls(params)

    def observe(self, m: ScalingMetrics) -> None:
        if self._last is not None and m.now < self._last.now:
            raise ValueError(f"metrics sample at {m.now} is older than the last one at {self._last.now}")
        self._last = m

    def decide(self, now: float) -> ScaleDecision:
        p = self.p
        m = self._last
        if m is None:
            desired = clamp(1, p.min_replicas, p.max_replicas)
            return ScaleDecision(desired, "no metrics yet")
        current = m.replicas
        idle_for = 0.0 if m.has_traffic else m.seconds_since_last_request + max(0.0, now - m.now)
        if current == 0 and m.has_traffic:
            desired, reason = 1, "traffic at zero replicas: cold start 1"
        elif m.queue_len > p.queue_threshold:
            desired, reason = current + 1, f"queue {m.queue_len} > {p.queue_threshold}: +1"
        elif idle_for >= p.idle_s and p.min_replicas == 0:
            desired, reason = 0, f"idle {idle_for:g} s >= {p.idle_s:g} s: scale to zero"
        elif idle_for >= p.idle_s and current > 0:
            since_step = idle_for if self._last_down is None else min(idle_for, now - self._last_down)
            if since_step >= p.idle_s:
                desired, reason = current - 1, f"idle {idle_for:g} s >= {p.idle_s:g} s: -1"
                self._last_down = now
            else:
                desired, reason = current, f"idle: next step down in {p.idle_s - since_step:g} s"
        else:
            desired, reason = current, "hold"
        bounded = clamp(desired, p.min_replicas, p.max_replicas)
        if bounded != desired:
            reason += f"; bounded to {bounded}"
        return ScaleDecision(bounded, reason)
