"""Registers every autoscaler under kind "autoscaler": kpa, seed-rule, aibrix-apa, ray-serve, llm-d-saturation.

`policies.builtin` calls `register(reg)` once; tests may call it on their own `Registry()`.
"""

from __future__ import annotations

from policies.autoscaling.aibrix_apa import AibrixApaAutoscaler
from policies.autoscaling.kpa import KnativePodAutoscaler
from policies.autoscaling.llmd_saturation import LlmdSaturationAutoscaler
from policies.autoscaling.ray_serve import RayServeAutoscaler
from policies.autoscaling.seed_rule import SeedRuleAutoscaler
from policies.autoscaling.types import AUTOSCALER_KIND
from policies.registry import Registry

AUTOSCALERS = (
    KnativePodAutoscaler,
    SeedRuleAutoscaler,
    AibrixApaAutoscaler,
    RayServeAutoscaler,
    LlmdSaturationAutoscaler,
)


def register(reg: Registry) -> None:
    """Add the built-in autoscalers to `reg` (a duplicate name is an error)."""
    for cls in AUTOSCALERS:
        reg.register(AUTOSCALER_KIND, cls.TYPE, cls.from_params, cls.Params)
