"""Registers the resilience policies; `policies.builtin` calls `register` (never an import side effect).

kind               name                  builds
circuit-breaker    consecutive-failures  CircuitBreaker        (one per protected model/backend)
outlier-detection  envoy                 OutlierDetector       (one per cluster of hosts)
retry              envoy-budget          EnvoyRetry            (Envoy: num_retries, retry_on, budget, back-off)
retry              ladder                LadderRetry           (the seed's ladder + Envoy's budget and back-off)
"""

from __future__ import annotations

from policies.registry import Registry
from policies.resilience.breaker import CircuitBreaker, CircuitBreakerParams
from policies.resilience.outlier import OutlierDetectionParams, OutlierDetector
from policies.resilience.retry import EnvoyRetry, EnvoyRetryParams, LadderRetry, LadderRetryParams

BREAKER_KIND = "circuit-breaker"
OUTLIER_KIND = "outlier-detection"
RETRY_KIND = "retry"
KINDS = (BREAKER_KIND, OUTLIER_KIND, RETRY_KIND)


def register(reg: Registry) -> None:
    reg.register(BREAKER_KIND, "consecutive-failures", CircuitBreaker.from_params, CircuitBreakerParams)
    reg.register(OUTLIER_KIND, "envoy", OutlierDetector.from_params, OutlierDetectionParams)
    reg.register(RETRY_KIND, "envoy-budget", EnvoyRetry.from_params, EnvoyRetryParams)
    reg.register(RETRY_KIND, "ladder", LadderRetry.from_params, LadderRetryParams)
