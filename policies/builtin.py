"""The one place where built-in policies are registered: read this file to see every name a config may use.

Each sub-package keeps its own `register(reg)` next to its policies; this module calls every one of them.
"""

from __future__ import annotations

from policies.registry import Registry
from policies.routing import filters, pickers, scorers


def _register_routing(reg: Registry) -> None:
    """llm-d's plugin types, spelled as llm-d spells them, plus the classic baselines and AIBrix's prefix router,
    and the canary traffic split between a model's revisions (kind "traffic-split")."""
    from policies.routing import aibrix, canary, latency_estimate, prefix_affinity

    canary.register(reg)

    for cls in (
        filters.LowQueueFilter,
        filters.FreshMetricsFilter,
        filters.SaturationFilter,
        prefix_affinity.PrefixCacheAffinityFilter,
        aibrix.AibrixImbalanceFilter,
    ):
        reg.register("filter", cls.TYPE, cls.from_params, cls.Params)
    for cls in (
        scorers.QueueScorer,
        scorers.RunningRequestsScorer,
        scorers.KvCacheUtilizationScorer,
        scorers.LoadAwareScorer,
        scorers.PrefixCacheScorer,
        scorers.ActiveRequestScorer,
        scorers.TokenLoadScorer,
        scorers.SessionAffinityScorer,
        scorers.LoraAffinityScorer,
    ):
        reg.register("scorer", cls.TYPE, cls.from_params, cls.Params)
        for alias in getattr(cls, "ALIASES", ()):  # deprecated names still accepted
            reg.register("scorer", alias, cls.from_params, cls.Params)
    for cls in (
        pickers.MaxScorePicker,
        pickers.RandomPicker,
        pickers.WeightedRandomPicker,
        pickers.RoundRobinPicker,
        pickers.PowerOfTwoPicker,
        pickers.LeastLatencyPicker,
        aibrix.AibrixPrefixCachePicker,
        latency_estimate.LatencyEstimatePicker,
    ):
        reg.register("picker", cls.TYPE, cls.from_params, cls.Params)


def build_default_registry() -> Registry:
    """A fresh registry holding every built-in policy (tests and experiments may extend their own copy)."""
    from policies.autoscaling.registration import register as register_autoscaling
    from policies.caching.registration import register as register_caching
    from policies.cost.registration import register as register_cost
    from policies.flowcontrol.registration import register as register_flowcontrol
    from policies.lifecycle.registration import register as register_lifecycle
    from policies.placement.registration import register as register_placement
    from policies.resilience.registration import register as register_resilience

    reg = Registry()
    _register_routing(reg)
    register_flowcontrol(reg)  # kinds: queue, saturation-detector, admission
    register_caching(reg)  # kind: response-cache
    register_resilience(reg)  # kinds: circuit-breaker, outlier-detection, retry
    register_autoscaling(reg)  # kind: autoscaler
    register_lifecycle(reg)  # kinds: restart-backoff, model-startup
    register_placement(reg)  # kind: placement
    register_cost(reg)  # kinds: budget, rightsizing
    return reg


REGISTRY: Registry = build_default_registry()
