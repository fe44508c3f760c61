"""The scenario's `gateway.resilience` section and the `build_*` functions making fresh policy objects.

    gateway:
      resilience:
        breaker:                      # one breaker per model the gateway protects
          type: consecutive-failures
          params: {failure_threshold: 5, cooldown_s: 30, half_open_probes: 1}
        outlier_detection:            # one detector per model's set of replicas
          type: envoy
          params: {consecutive_5xx: 5, interval_s: 10, max_ejection_percent: 10}
        retry:
          type: ladder                # or envoy-budget
          params: {budget_percent: 20, min_retry_concurrency: 3, fallback_after: 2, open_breaker_after: 5}

Every section is optional and absent means off (Envoy too has no outlier detection or retries unless configured);
`params` may be omitted for the defaults. Types and params are checked when the configuration is loaded.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.registry import Registry
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.outlier import OutlierDetector
from policies.resilience.registration import BREAKER_KIND, OUTLIER_KIND, RETRY_KIND
from policies.resilience.retry import EnvoyRetry, LadderRetry


def default_registry() -> Registry:
    """The one built-in registry (imported late: policies.builtin imports this package's registration)."""
    from policies.builtin import REGISTRY

    return REGISTRY


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySpec(_Frozen):
    type: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


class ResilienceConfig(_Frozen):
    breaker: PolicySpec | None = None
    outlier_detection: PolicySpec | None = None
    retry: PolicySpec | None = None

    @model_validator(mode="after")
    def _check(self) -> ResilienceConfig:
        reg = default_registry()
        for field, kind in (("breaker", BREAKER_KIND), ("outlier_detection", OUTLIER_KIND), ("retry", RETRY_KIND)):
            spec: PolicySpec | None = getattr(self, field)
            if spec is not None:
                reg.validate(kind, spec.type, spec.params)
        return self


def _cfg(config: ResilienceConfig | dict[str, Any] | None) -> ResilienceConfig:
    if config is None:
        return ResilienceConfig()
    return config if isinstance(config, ResilienceConfig) else ResilienceConfig.model_validate(config)


def _build(kind: str, spec: PolicySpec | None, rng: np.random.Generator, registry: Registry | None) -> object | None:
    if spec is None:
        return None
    return (registry if registry is not None else default_registry()).build(kind, spec.type, spec.params, rng)


def build_breaker(
    config: ResilienceConfig | dict[str, Any] | None, rng: np.random.Generator, registry: Registry | None = None
) -> CircuitBreaker | None:
    """A fresh breaker (call once per protected model), or None when the section is absent."""
    return cast(CircuitBreaker | None, _build(BREAKER_KIND, _cfg(config).breaker, rng, registry))


def build_outlier_detector(
    config: ResilienceConfig | dict[str, Any] | None, rng: np.random.Generator, registry: Registry | None = None
) -> OutlierDetector | None:
    """A fresh detector (call once per cluster of replicas), or None when the section is absent."""
    return cast(OutlierDetector | None, _build(OUTLIER_KIND, _cfg(config).outlier_detection, rng, registry))


def build_retry(
    config: ResilienceConfig | dict[str, Any] | None, rng: np.random.Generator, registry: Registry | None = None
) -> EnvoyRetry | LadderRetry | None:
    """The retry policy, or None (no retries) when the section is absent."""
    return cast(EnvoyRetry | LadderRetry | None, _build(RETRY_KIND, _cfg(config).retry, rng, registry))
