"""Envoy outlier detection's ejection cap, case by case from upstream.

Source: envoyproxy/envoy source/common/upstream/outlier_detection_impl.cc at 00c7146d95ff67fc55c78f036d6236689b66e72f:
`DetectorConfig` reads `always_eject_one_host` with default false; `DetectorImpl::ejectHost` allows an ejection when
100 * (active + 1) / hosts <= max_ejection_percent, or, only with `always_eject_one_host`, when active == 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.resilience.outlier import OutlierDetectionParams, OutlierDetector


def _fail_all(hosts: int, **params: object) -> OutlierDetector:
    d = OutlierDetector(OutlierDetectionParams(**params), np.random.default_rng(0))  # type: ignore[arg-type]
    d.set_hosts(f"h{i}" for i in range(hosts))
    for i in range(hosts):
        for _ in range(5):
            d.record(0.0, f"h{i}", False)
    return d


# (hosts, params given, ejected when every host fails 5 times in a row)
CASES = [
    (3, {}, 0),  # default 10%, default always_eject_one_host=false: 100 * 1 / 3 = 33 > 10
    (5, {}, 0),
    (9, {}, 0),  # 100 * 1 / 9 = 11.1 > 10
    (10, {}, 1),  # 100 * 1 / 10 = 10 <= 10
    (20, {}, 2),
    (3, {"always_eject_one_host": True}, 1),  # active == 0 lets the first one through, then the cap holds
    (20, {"always_eject_one_host": True}, 2),  # the cap already allows 2: the switch adds nothing
    (4, {"max_ejection_percent": 50.0}, 2),
    (3, {"max_ejection_percent": 0.0, "always_eject_one_host": True}, 1),
]


@pytest.mark.parametrize(("hosts", "params", "ejected"), CASES)
def test_ejection_cap_as_envoy_eject_host(hosts: int, params: dict[str, object], ejected: int) -> None:
    d = _fail_all(hosts, **params)
    assert len(d.ejected(0.0)) == ejected
    assert d.counters["ejections_overflow"] == hosts - ejected
    assert d.counters["ejections_detected_consecutive_5xx"] == hosts


def test_default_is_envoys() -> None:
    assert OutlierDetectionParams().always_eject_one_host is False
