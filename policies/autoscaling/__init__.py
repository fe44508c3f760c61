"""Autoscaling (POLICY_REFERENCE.md section 3): kind "autoscaler".

- `types`: ScalingMetrics (one sample), ScaleDecision, the Autoscaler protocol, CommonParams (min/max replicas).
- kpa (Knative Pod Autoscaler), seed-rule, aibrix-apa, ray-serve, llm-d-saturation.
- `config.AutoscalerConfig` / `build_autoscaler`: the scenario's autoscaler section.
"""

from policies.autoscaling.types import (
    AUTOSCALER_KIND,
    Autoscaler,
    CommonParams,
    ScaleDecision,
    ScalingMetrics,
    clamp,
)

__all__ = ["AUTOSCALER_KIND", "Autoscaler", "CommonParams", "ScaleDecision", "ScalingMetrics", "clamp"]
