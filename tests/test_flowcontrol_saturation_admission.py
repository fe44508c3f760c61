"""Flow-control saturation detectors (utilization, concurrency) and admission policies (shed, probabilistic)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.errors import PolicyConfigError
from policies.flowcontrol.admission import AlwaysAdmit, ProbabilisticAdmitter, ShedSheddable
from policies.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from policies.routing.types import EndpointState
from tests.test_flowcontrol_helpers import registry

# -- saturation detectors --------------------------------------------------------------------------------------


def ep(name="e", waiting=0, kv=0.0, at=10.0, healthy=True) -> EndpointState:
    return EndpointState(name=name, model="m", waiting=waiting, kv_usage=kv, scraped_at=at, healthy=healthy)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep(waiting=10, kv=0.2)], 2.0),  # max(10/5, 0.2/0.8)
        ([ep(waiting=0, kv=0.4)], 0.5),  # max(0, 0.4/0.8)
        ([ep(waiting=2, kv=0.8)], 1.0),
        ([ep(waiting=10, kv=0.2, at=9.7)], 1.0),  # 0.3 s old > 0.2 s: stale counts as 1.0
        ([ep(waiting=10, kv=0.2, at=9.8)], 2.0),  # exactly 0.2 s old is still fresh
        ([ep(waiting=0, healthy=False)], 1.0),
        ([], 1.0),
        ([ep("a", waiting=10, kv=0.2), ep("b", waiting=0, kv=0.4), ep("c", at=0.0)], (2.0 + 0.5 + 1.0) / 3),
    ],
)
def test_utilization_detector(endpoints, expected) -> None:
    assert UtilizationDetector().saturation(10.0, endpoints) == pytest.approx(expected)


def test_utilization_detector_thresholds_and_llm_d_param_names() -> None:
    det = registry().build(
        "saturation-detector", "utilization", {"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5}, None
    )
    assert det.saturation(0.0, [ep(waiting=5, kv=0.4, at=0.0)]) == pytest.approx(0.8)
    with pytest.raises(PolicyConfigError, match=r"kv_cache_threshold|kvCacheUtilThreshold"):
        registry().validate("saturation-detector", "utilization", {"kv_cache_threshold": 1.5})


def test_utilization_scrape_lag_compensation() -> None:
    """credit = max(0, in_flight - (waiting + running)) joins the queue term; off by default (llm-d too)."""
    pool = [EndpointState("a", "m", waiting=1, running=2, kv_usage=0.0, scraped_at=0.0)]
    plain = UtilizationDetector()
    lagged = registry().build("saturation-detector", "utilization", {"scrape_lag_compensation": True}, None)
    for rid in range(8):
        plain.on_dispatch(0.0, rid, "a")
        lagged.on_dispatch(0.0, rid, "a")
    assert plain.saturation(0.0, pool) == pytest.approx(0.2)  # 1 / 5: hooks are ignored
    assert lagged.saturation(0.0, pool) == pytest.approx((1 + (8 - 1 - 2)) / 5)
    for rid in range(5):
        lagged.on_complete(0.1, rid, "a")
    assert lagged.saturation(0.1, pool) == pytest.approx(0.2)  # 3 in flight <= 1 + 2 scraped: no credit


def test_concurrency_detector_counts() -> None:
    det = ConcurrencyDetector(max_concurrency=2)
    pool = [ep("a"), ep("b")]
    assert det.saturation(0, pool) == 0.0 and det.saturation(0, []) == 1.0
    for rid, where in enumerate("aaab"):
        det.on_dispatch(0, rid, where)
    assert (det.in_flight("a"), det.in_flight("b")) == (3, 1)
    assert det.saturation(0, pool) == 1.0  # 4 / (2 * 2)
    assert det.saturation(0, [ep("a")]) == 1.5  # only the given endpoints count
    det.on_complete(1, 0, "a")
    det.on_complete(1, 0, "a")  # twice: counted once
    det.on_complete(1, 99, "a")  # unknown: ignored
    assert det.saturation(1, pool) == 0.75
    det.on_dispatch(2, 1, "b")  # a retry moves request 1 from a to b
    assert (det.in_flight("a"), det.in_flight("b")) == (1, 2)
    for rid in (1, 2, 3):
        det.on_complete(3, rid, "?")
    assert det.saturation(3, pool) == 0.0


# -- admission -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "saturation", "admitted"),
    [(-1, 1.0, False), (-1, 1.12, False), (-1, 0.99, True), (0, 5.0, True), (2, 5.0, True), (-3, 1.0, False)],
)
def test_shed_sheddable(priority, saturation, admitted) -> None:
    d = ShedSheddable().admit(0.0, priority, saturation)
    assert d.admitted is admitted
    assert AlwaysAdmit().admit(0.0, priority, saturation).admitted
    if not admitted:
        assert d.reason == f"shed: saturation {saturation:.2f} >= 1, priority {priority}"


def test_shed_sheddable_reason_text() -> None:
    assert ShedSheddable().admit(0, -1, 1.12).reason == "shed: saturation 1.12 >= 1, priority -1"


@pytest.mark.parametrize(
    ("saturation", "p"),
    [(0.0, 0.0), (0.1, 0.003), (0.15, 0.02278125), (0.2, 0.096), (0.3, 0.729), (0.5, 1.0), (1.0, 1.0), (3.0, 1.0)],
)
def test_probabilistic_reject_probability(saturation, p) -> None:
    assert ProbabilisticAdmitter(np.random.default_rng(0)).reject_probability(saturation) == pytest.approx(p)


@pytest.mark.parametrize(("saturation", "p"), [(0.15, 0.02278125), (0.2, 0.096), (0.3, 0.729)])
def test_probabilistic_empirical_rate(saturation, p) -> None:
    adm = ProbabilisticAdmitter(np.random.default_rng(7))
    n = 20_000
    rejected = sum(not adm.admit(0.0, -1, saturation).admitted for _ in range(n))
    assert abs(rejected / n - p) <= 0.006  # ~3 standard deviations at p = 0.096; well within 2 points


def test_probabilistic_never_sheds_non_sheddable_and_names_the_rule() -> None:
    adm = ProbabilisticAdmitter(np.random.default_rng(1))
    assert all(adm.admit(0.0, 0, 10.0).admitted for _ in range(100))
    d = adm.admit(0.0, -1, 1.0)
    assert not d.admitted and d.reason == "shed: saturation 1.00, reject probability 1, priority -1"
    k = registry().build("admission", "probabilistic", {"k": 100, "power": 2}, np.random.default_rng(0))
    assert k.reject_probability(0.05) == pytest.approx(0.25)
