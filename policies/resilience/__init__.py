"""Resilience: a circuit breaker, Envoy's outlier detection, Envoy's retry budget and back-off, and the seed's
failure ladder. Build them from configuration with `policies.resilience.config`."""

from policies.resilience.breaker import CircuitBreaker
from policies.resilience.outlier import OutlierDetectionParams, OutlierDetector
from policies.resilience.retry import (
    EnvoyRetry,
    FailureLadder,
    LadderDecision,
    LadderRetry,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
)

__all__ = [
    "CircuitBreaker",
    "EnvoyRetry",
    "FailureLadder",
    "LadderDecision",
    "LadderRetry",
    "OutlierDetectionParams",
    "OutlierDetector",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
]
