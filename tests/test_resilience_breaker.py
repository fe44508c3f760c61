"""Circuit breaker: hand-computed timelines, cool-down growth, params and registration."""

from __future__ import annotations

import numpy as np
import pytest

from policies.errors import PolicyConfigError
from policies.registry import Registry
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.registration import register


def _fail(b: CircuitBreaker, now: float, n: int) -> None:
    for _ in range(n):
        assert b.allow(now)
        b.record(now, False)


def test_five_consecutive_failures_open_and_cooldown_blocks() -> None:
    b = CircuitBreaker()
    _fail(b, 1.0, 4)
    assert b.state(1.0) == "closed"
    b.record(1.5, True)  # a success resets the run
    _fail(b, 2.0, 4)
    assert b.state(2.0) == "closed"
    b.allow(3.0)
    b.record(3.0, False)  # 5th consecutive failure
    assert b.state(3.0) == "open"
    assert b.reopens_at(3.0) == 33.0
    assert not b.allow(3.0)
    assert not b.allow(32.999)
    assert b.state(32.999) == "open"
    assert b.transitions == [(3.0, "closed", "open")]


def test_half_open_lets_one_probe_and_success_closes() -> None:
    b = CircuitBreaker()
    _fail(b, 0.0, 5)
    assert b.allow(30.0)  # the probe
    assert b.state(30.0) == "half_open"
    assert not b.allow(30.1)  # only one probe
    assert not b.allow(31.0)
    b.record(31.5, True)
    assert b.state(31.5) == "closed"
    assert b.allow(31.6)
    assert b.transitions == [(0.0, "closed", "open"), (30.0, "open", "half_open"), (31.5, "half_open", "closed")]


def test_half_open_failure_reopens_and_restarts_cooldown() -> None:
    b = CircuitBreaker()
    _fail(b, 0.0, 5)
    assert b.allow(40.0)
    b.record(41.0, False)
    assert b.state(41.0) == "open"
    assert not b.allow(70.9)
    assert b.allow(71.0)
    # The half-open transition is stamped when the first cool-down ended (30.0), not when it was observed (40.0).
    assert b.transitions == [
        (0.0, "closed", "open"),
        (30.0, "open", "half_open"),
        (41.0, "half_open", "open"),
        (71.0, "open", "half_open"),
    ]


def test_several_probes_must_all_succeed() -> None:
    b = CircuitBreaker(failure_threshold=2, cooldown_s=10.0, half_open_probes=3)
    _fail(b, 0.0, 2)
    assert [b.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert b.probes_in_flight == 3
    b.record(10.5, True)
    b.record(10.6, True)
    assert b.state(10.6) == "half_open"
    b.record(10.7, True)
    assert b.state(10.7) == "closed"


def test_stale_success_does_not_close_without_a_probe() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5.0)
    _fail(b, 0.0, 1)
    b.record(1.0, True)  # result of a request sent before opening: ignored while open
    b.record(6.0, True)  # half-open now, but no probe is out
    assert b.state(6.0) == "half_open"
    assert b.allow(6.0)
    b.record(6.5, True)
    assert b.state(6.5) == "closed"


def test_cooldown_grows_and_is_capped_then_resets_on_close() -> None:
    b = CircuitBreaker(failure_threshold=1, cooldown_s=10.0, cooldown_multiplier=2.0, max_cooldown_s=35.0)
    _fail(b, 0.0, 1)
    opened = 0.0
    expected = [10.0, 20.0, 35.0, 35.0]
    for cooldown in expected:
        assert b.reopens_at(opened) == opened + cooldown
        probe_at = opened + cooldown
        assert b.allow(probe_at)
        b.record(probe_at, False)
        opened = probe_at
    assert b.cooldown_s == 35.0
    assert b.allow(opened + 35.0)
    b.record(opened + 35.0, True)
    assert b.state(opened + 35.0) == "closed" and b.cooldown_s == 10.0


def test_params_validated_and_registered() -> None:
    reg = Registry()
    register(reg)
    b = reg.build("circuit-breaker", "consecutive-failures", {}, np.random.default_rng(0))
    assert isinstance(b, CircuitBreaker)
    assert (b.failure_threshold, b.base_cooldown_s, b.half_open_probes, b.cooldown_multiplier) == (5, 30.0, 1, 1.0)
    with pytest.raises(PolicyConfigError, match="max_cooldown_s"):
        reg.validate("circuit-breaker", "consecutive-failures", {"cooldown_s": 60, "max_cooldown_s": 30})
    with pytest.raises(PolicyConfigError, match="failure_threshold"):
        reg.validate("circuit-breaker", "consecutive-failures", {"failure_threshold": 0})
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_probes=0)
