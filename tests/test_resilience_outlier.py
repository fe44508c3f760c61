"""Envoy outlier detection: consecutive 5xx, ejection time back-off and decay, the ejection cap, success-rate and
failure-percentage ejection, return at the first sweep after the ejection time."""

from __future__ import annotations

import numpy as np
import pytest

from policies.errors import PolicyConfigError
from policies.registry import Registry
from policies.resilience.outlier import OutlierDetectionParams, OutlierDetector
from policies.resilience.registration import register


def _hosts(n: int) -> list[str]:
    return [f"h{i}" for i in range(n)]


def _detector(n: int = 20, **params) -> OutlierDetector:
    d = OutlierDetector(OutlierDetectionParams(**params), np.random.default_rng(0))
    d.set_hosts(_hosts(n))
    return d


def _fail(d: OutlierDetector, now: float, host: str, n: int) -> None:
    for _ in range(n):
        d.record(now, host, False)


def test_five_consecutive_5xx_eject_at_once() -> None:
    d = _detector()
    _fail(d, 1.0, "h3", 4)
    assert not d.is_ejected(1.0, "h3")
    d.record(1.5, "h3", True)  # a success resets the run
    _fail(d, 2.0, "h3", 4)
    assert not d.is_ejected(2.0, "h3")
    d.record(2.5, "h3", False)
    assert d.is_ejected(2.5, "h3") and d.ejected(2.5) == {"h3"}
    assert d.events == [(2.5, "h3", "ejected", "consecutive_5xx")]


def test_return_at_first_sweep_after_ejection_time() -> None:
    d = _detector()
    _fail(d, 3.0, "h0", 5)
    for t in (10.0, 20.0, 30.0):
        d.evaluate(t, _hosts(20))
        assert d.is_ejected(t, "h0")  # 30 - 3 < 30
    d.evaluate(40.0, _hosts(20))
    assert not d.is_ejected(40.0, "h0")
    assert d.events[-1] == (40.0, "h0", "returned", "ejection_time_elapsed")


def test_ejection_time_grows_30_60_90_and_caps_at_300() -> None:
    d = _detector()
    durations = []
    t, ejected_at = 0.0, 0.0
    _fail(d, t, "h1", 5)
    while len(durations) < 13:
        t += 10.0
        d.evaluate(t, _hosts(20))
        if not d.is_ejected(t, "h1"):
            durations.append(t - ejected_at)
            ejected_at = t
            _fail(d, t, "h1", 5)  # fails again right after returning: no decay in between
            assert d.is_ejected(t, "h1")
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
    assert d.info("h1").backoff == 11  # Envoy stops counting once backoff * base >= max + base


def test_backoff_decays_one_step_per_healthy_interval() -> None:
    d = _detector()
    _fail(d, 0.0, "h1", 5)
    d.evaluate(30.0, _hosts(20))  # returned (backoff 1)
    _fail(d, 30.0, "h1", 5)  # backoff 2: 60 s
    assert d.info("h1").ejection_time_s == 60.0
    d.evaluate(90.0, _hosts(20))
    assert not d.is_ejected(90.0, "h1")
    d.evaluate(90.0 + 10.0, _hosts(20))
    assert d.info("h1").backoff == 1
    d.evaluate(90.0 + 20.0, _hosts(20))
    assert d.info("h1").backoff == 0
    d.evaluate(90.0 + 30.0, _hosts(20))
    assert d.info("h1").backoff == 0
    _fail(d, 125.0, "h1", 5)
    assert d.info("h1").ejection_time_s == 30.0


@pytest.mark.parametrize(
    ("hosts", "percent", "always_one", "most"),
    [
        (20, 10.0, True, 2),
        (20, 10.0, False, 2),
        (3, 10.0, True, 1),
        (3, 10.0, False, 0),  # current Envoy's default: 100 * 1 / 3 > 10, nothing is ejected
        (10, 10.0, False, 1),
        (5, 50.0, False, 2),
        (4, 100.0, False, 4),
    ],
)
def test_max_ejection_percent(hosts: int, percent: float, always_one: bool, most: int) -> None:
    d = _detector(hosts, max_ejection_percent=percent, always_eject_one_host=always_one)
    for h in _hosts(hosts):
        _fail(d, 1.0, h, 5)
    assert len(d.ejected(1.0)) == most
    assert d.counters["ejections_overflow"] == hosts - most


def test_ejection_cap_frees_up_when_a_host_returns() -> None:
    d = _detector(3, always_eject_one_host=True)
    _fail(d, 0.0, "h0", 5)
    _fail(d, 0.0, "h1", 5)
    assert d.ejected(0.0) == {"h0"}
    d.evaluate(30.0, _hosts(3))
    _fail(d, 31.0, "h1", 5)
    assert d.ejected(31.0) == {"h1"}


def _traffic(d: OutlierDetector, now: float, per_host: dict[str, tuple[int, int]]) -> None:
    """Record (requests, successes) per host (the tests raise consecutive_5xx so runs of failures do not eject)."""
    for host, (total, ok) in per_host.items():
        for i in range(total):
            d.record(now, host, i < ok)


def test_success_rate_ejection_constructed_case() -> None:
    # Envoy's own example: rates {50, 100, 100, 100, 100} -> mean 90, stdev 20, threshold 90 - 1.9*20 = 52.
    d = _detector(5, consecutive_5xx=1000, always_eject_one_host=True)
    counts = {"h0": (100, 50), "h1": (100, 100), "h2": (100, 100), "h3": (100, 100), "h4": (100, 100)}
    _traffic(d, 5.0, counts)
    d.evaluate(10.0, _hosts(5))
    assert d.last_success_rate_mean == pytest.approx(90.0)
    assert d.last_success_rate_threshold == pytest.approx(52.0)
    assert d.ejected(10.0) == {"h0"}
    assert d.events == [(10.0, "h0", "ejected", "success_rate")]


def test_no_success_rate_ejection_when_only_four_hosts_have_enough_volume() -> None:
    d = _detector(5, consecutive_5xx=1000, always_eject_one_host=True)
    counts = {"h0": (100, 50), "h1": (100, 100), "h2": (100, 100), "h3": (100, 100), "h4": (99, 99)}
    _traffic(d, 5.0, counts)
    d.evaluate(10.0, _hosts(5))
    assert d.last_success_rate_threshold is None
    assert d.ejected(10.0) == set()


def test_success_rate_uses_only_the_last_interval() -> None:
    d = _detector(5, consecutive_5xx=1000, always_eject_one_host=True)
    _traffic(d, 5.0, {"h0": (100, 50), **{f"h{i}": (100, 100) for i in range(1, 5)}})
    d.evaluate(10.0, _hosts(5))  # h0 ejected
    assert d.ejected(10.0) == {"h0"}
    d2 = _detector(5, consecutive_5xx=1000, always_eject_one_host=True)
    _traffic(d2, 5.0, {"h0": (60, 30), **{f"h{i}": (60, 60) for i in range(1, 5)}})
    d2.evaluate(10.0, _hosts(5))  # below the volume
    _traffic(d2, 15.0, {"h0": (60, 30), **{f"h{i}": (60, 60) for i in range(1, 5)}})
    d2.evaluate(20.0, _hosts(5))  # counts do not carry over: still below the volume
    assert d2.ejected(20.0) == set()


def test_failure_percentage_detected_but_enforced_only_when_switched_on() -> None:
    counts = {"h0": (50, 5), **{f"h{i}": (50, 50) for i in range(1, 5)}}  # h0 fails 90%
    off = _detector(5, consecutive_5xx=1000, always_eject_one_host=True)
    _traffic(off, 1.0, counts)
    off.evaluate(10.0, _hosts(5))
    assert off.ejected(10.0) == set()
    assert off.counters["ejections_detected_failure_percentage"] == 1
    on = _detector(5, consecutive_5xx=1000, always_eject_one_host=True, enforce_failure_percentage=True)
    _traffic(on, 1.0, counts)
    on.evaluate(10.0, _hosts(5))
    assert on.ejected(10.0) == {"h0"}
    assert on.events == [(10.0, "h0", "ejected", "failure_percentage")]


def test_host_membership_follows_evaluate() -> None:
    d = _detector(3, always_eject_one_host=True)
    _fail(d, 0.0, "h2", 5)
    d.evaluate(10.0, ["h0", "h1"])
    assert d.ejected(10.0) == set() and d.hosts == ["h0", "h1"]
    d.record(11.0, "new", True)
    assert "new" in d.hosts


def test_jitter_is_seeded_and_bounded() -> None:
    def run(seed: int) -> float:
        d = OutlierDetector(OutlierDetectionParams(max_ejection_time_jitter_s=5.0), np.random.default_rng(seed))
        d.set_hosts(_hosts(10))
        _fail(d, 0.0, "h0", 5)
        t = 0.0
        while d.is_ejected(t, "h0"):
            t += 1.0
            d.evaluate(t)
        return t

    assert run(7) == run(7)
    assert all(30.0 <= run(s) <= 35.0 for s in range(10))


def test_params_and_registration() -> None:
    p = OutlierDetectionParams()
    assert (p.consecutive_5xx, p.interval_s, p.base_ejection_time_s, p.effective_max_ejection_time_s) == (
        5,
        10.0,
        30.0,
        300.0,
    )
    assert (p.max_ejection_percent, p.success_rate_minimum_hosts, p.success_rate_request_volume) == (10.0, 5, 100)
    assert (p.success_rate_stdev_factor, p.failure_percentage_threshold, p.failure_percentage_request_volume) == (
        1.9,
        85.0,
        50,
    )
    assert p.enforce_failure_percentage is False
    assert p.always_eject_one_host is False  # Envoy's DetectorConfig default
    assert OutlierDetectionParams(base_ejection_time_s=400).effective_max_ejection_time_s == 400.0
    reg = Registry()
    register(reg)
    assert isinstance(reg.build("outlier-detection", "envoy", {}, np.random.default_rng(0)), OutlierDetector)
    with pytest.raises(PolicyConfigError, match="max_ejection_time_s"):
        reg.validate("outlier-detection", "envoy", {"base_ejection_time_s": 60, "max_ejection_time_s": 30})
    with pytest.raises(PolicyConfigError, match="max_ejection_percent"):
        reg.validate("outlier-detection", "envoy", {"max_ejection_percent": 101})
    with pytest.raises(ValueError, match="Generator"):
        OutlierDetector(OutlierDetectionParams(enforcing_success_rate=50))


def test_float_rounding_does_not_delay_the_return() -> None:
    d = _detector()
    _fail(d, 2.3, "h0", 5)
    assert 32.3 - 2.3 < 30.0  # 29.999999999999996
    d.evaluate(32.3, _hosts(20))
    assert not d.is_ejected(32.3, "h0")
