"""Retry budget, Envoy back-off, the seed's failure ladder and the two `retry` policies."""

from __future__ import annotations

import numpy as np
import pytest

from policies.errors import PolicyConfigError
from policies.registry import Registry
from policies.resilience.registration import register
from policies.resilience.retry import (
    EnvoyRetry,
    FailureLadder,
    LadderDecision,
    LadderRetry,
    RetryBudget,
    RetryPolicy,
)


@pytest.mark.parametrize(
    ("active", "pending", "limit"),
    [(30, 10, 8), (0, 0, 3), (10, 4, 3), (20, 0, 4), (24, 0, 4), (25, 0, 5), (1000, 24, 204)],
)
def test_budget_is_max_of_min_concurrency_and_percent(active: int, pending: int, limit: int) -> None:
    b = RetryBudget()
    assert b.max_retries_in_flight(active, pending) == limit
    assert b.can_retry(active, pending, limit - 1)
    assert not b.can_retry(active, pending, limit)


def test_budget_custom_values() -> None:
    assert RetryBudget(budget_percent=50.0, min_retry_concurrency=1).max_retries_in_flight(3, 0) == 1
    assert RetryBudget(budget_percent=50.0, min_retry_concurrency=0).max_retries_in_flight(1, 0) == 0
    with pytest.raises(ValueError):
        RetryBudget(budget_percent=120.0)


LADDER_TABLE = [
    # failures, has_fallback, budget_ok, action, reason contains
    (1, True, True, "retry", "retry the same model"),
    (1, False, True, "retry", "retry the same model"),
    (2, True, True, "fallback", "backup model"),
    (3, True, True, "fallback", "backup model"),
    (4, True, True, "fallback", "backup model"),
    (2, False, True, "retry", "no backup model"),
    (5, True, True, "fail", "open the breaker"),
    (7, False, True, "fail", "open the breaker"),
    (1, True, False, "fail", "retry budget exhausted"),
    (3, True, False, "fail", "retry budget exhausted"),
    (5, True, False, "fail", "open the breaker"),
]


@pytest.mark.parametrize(("failures", "fallback", "budget", "action", "reason"), LADDER_TABLE)
def test_ladder_table(failures: int, fallback: bool, budget: bool, action: str, reason: str) -> None:
    d = FailureLadder().decide(failures, fallback, budget)
    assert isinstance(d, LadderDecision)
    assert d.action == action
    assert reason in d.reason


def test_ladder_exact_budget_reason_and_validation() -> None:
    assert FailureLadder().decide(1, True, False) == LadderDecision("fail", "retry budget exhausted")
    ladder = FailureLadder(retry_same_after=2, fallback_after=3, open_breaker_after=4)
    assert [ladder.decide(n, True, True).action for n in (1, 2, 3, 4)] == ["fail", "retry", "fallback", "fail"]
    with pytest.raises(ValueError):
        FailureLadder(retry_same_after=3, fallback_after=2)
    with pytest.raises(ValueError):
        FailureLadder().decide(0, True, True)


def test_backoff_intervals_follow_envoy_doubling() -> None:
    p = RetryPolicy(rng=np.random.default_rng(0))
    assert [p.interval_s(n) for n in range(1, 8)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25])
    q = RetryPolicy(base_interval_s=0.1, max_interval_s=0.3, rng=np.random.default_rng(0))
    assert [q.interval_s(n) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_backoff_bounds_and_determinism() -> None:
    def draws(seed: int) -> list[float]:
        p = RetryPolicy(rng=np.random.default_rng(seed))
        return [p.next_backoff_s(n) for n in range(1, 8) for _ in range(200)]

    a = draws(11)
    assert a == draws(11)
    assert a != draws(12)
    for n in range(1, 8):
        chunk = a[(n - 1) * 200 : n * 200]
        upper = min(0.025 * 2 ** (n - 1), 0.25) if n < 5 else 0.25
        assert all(0.0 <= x < upper for x in chunk)
        assert max(chunk) > 0.8 * upper  # full jitter reaches up to the interval
        assert min(chunk) < 0.2 * upper


def test_retry_on_coverage() -> None:
    p = RetryPolicy(rng=np.random.default_rng(0))
    assert p.is_retryable("5xx") and p.is_retryable("reset") and p.is_retryable("timeout")
    assert p.is_retryable("gateway-error")  # "5xx" covers 502/503/504
    assert not p.is_retryable("4xx")
    only_gw = RetryPolicy(retry_on=("gateway-error",), rng=np.random.default_rng(0))
    assert not only_gw.is_retryable("5xx") and not only_gw.is_retryable("reset")
    with pytest.raises(ValueError):
        RetryPolicy(retry_on=("everything",), rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        p.is_retryable("teapot")


def _reg() -> Registry:
    reg = Registry()
    register(reg)
    return reg


def test_envoy_budget_policy_retries_once_within_budget() -> None:
    r = _reg().build("retry", "envoy-budget", {}, np.random.default_rng(3))
    assert isinstance(r, EnvoyRetry)
    first = r.decide(1, "5xx", has_fallback=True, active=30, pending=10, retries_in_flight=7)
    assert first.action == "retry" and 0.0 <= first.backoff_s < 0.025
    assert r.decide(2, "5xx", True, 30, 10, 0).action == "fail"  # num_retries = 1
    assert r.decide(1, "5xx", True, 30, 10, 8).reason == "retry budget exhausted"
    assert r.decide(1, "4xx", True, 30, 10, 0).action == "fail"


def test_ladder_policy_combines_ladder_budget_and_backoff() -> None:
    r = _reg().build("retry", "ladder", {}, np.random.default_rng(3))
    assert isinstance(r, LadderRetry)
    steps = [r.decide(n, "5xx", True, 10, 0, 0) for n in range(1, 6)]
    assert [s.action for s in steps] == ["retry", "fallback", "fallback", "fallback", "fail"]
    assert 0.0 <= steps[0].backoff_s < 0.025 and steps[1].backoff_s == 0.0
    assert r.decide(1, "5xx", True, 10, 0, 3).reason == "retry budget exhausted"
    assert r.decide(1, "4xx", True, 10, 0, 0).action == "fail"


def test_retry_params_validated() -> None:
    reg = _reg()
    with pytest.raises(PolicyConfigError, match="retry_on"):
        reg.validate("retry", "envoy-budget", {"retry_on": ["sometimes"]})
    with pytest.raises(PolicyConfigError, match="max_interval_s"):
        reg.validate("retry", "envoy-budget", {"base_interval_s": 1.0, "max_interval_s": 0.5})
    with pytest.raises(PolicyConfigError, match="fallback_after"):
        reg.validate("retry", "ladder", {"fallback_after": 6})
    with pytest.raises(PolicyConfigError, match="budget_percent"):
        reg.validate("retry", "ladder", {"budget_percent": -1})
