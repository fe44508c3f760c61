"""Flow control as llm-d orders, expires and caps it, case by case from upstream.

Sources, llm-d/llm-d-inference-scheduler (llm-d-router) at 520af478:
- pkg/epp/framework/plugins/flowcontrol/ordering/edf/edf.go (+ edf_test.go `TestEDF_Less`): deadline = enqueue time
  + effective TTL; TTL <= 0 sorts after every deadline-bound item; ties first come first served.
- pkg/epp/flowcontrol/controller/internal/processor.go `dispatchCycle`: bands from highest to lowest priority, the
  ordering policy only orders inside a band; `hasCapacity`: a limit of 0 is no limit, else reject when len+1 > cap.
- pkg/epp/flowcontrol/controller/config.go: DefaultRequestTTL is zero (no TTL) unless configured.
- pkg/epp/flowcontrol/registry/config.go: band and global MaxRequests default to 0 (only MaxBytes gets a 1 GB default).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.flowcontrol.config import FlowControlConfig, build_flow_control
from tests.test_flowcontrol_helpers import INF, drain, item, make_queue

NOW = 100.0


def _deadline(enqueued: float, ttl: float) -> float:
    return enqueued + ttl if ttl > 0 else INF


# edf_test.go TestEDF_Less: (name, enqueue offset, TTL); pushed in enqueue order, dispatched D, B, A, E, C.
EDF_ITEMS = [("E", -10.0, 0.0), ("C", -5.0, -1.0), ("D", -1.0, 6.0), ("A", 0.0, 10.0), ("B", 1.0, 5.0)]


def test_edf_within_one_band_follows_edf_less() -> None:
    q = make_queue("edf")
    names = {}
    for rid, (name, offset, ttl) in enumerate(EDF_ITEMS):
        names[rid] = name
        t = NOW + offset
        assert q.push(t, item(rid, "normal", t=t, deadline=_deadline(t, ttl))).accepted
    assert [names[r] for r in drain(q, NOW + 1.0)] == ["D", "B", "A", "E", "C"]


# (class, deadline) pushed in this order -> dispatch order: bands strict, EDF inside each band.
BAND_CASES = [
    ([("low", 1.0), ("critical", 50.0)], [1, 0]),  # a later deadline in a higher band goes first
    ([("normal", 9.0), ("normal", 2.0), ("high", INF)], [2, 1, 0]),  # no deadline still beats a lower band
    ([("low", 3.0), ("low", 1.0), ("low", INF), ("low", 1.0)], [1, 3, 0, 2]),
    ([("critical", INF), ("critical", 4.0), ("high", 1.0)], [1, 0, 2]),
]


@pytest.mark.parametrize(("pushed", "order"), BAND_CASES)
def test_edf_keeps_bands_strict(pushed: list[tuple[str, float]], order: list[int]) -> None:
    q = make_queue("edf")
    for rid, (cls, deadline) in enumerate(pushed):
        assert q.push(0.0, item(rid, cls, deadline=deadline)).accepted
    assert drain(q) == order


def test_default_ttl_is_none() -> None:
    assert FlowControlConfig().ttl_s == {}
    fc = build_flow_control(None, np.random.default_rng(0))
    x = fc.make_item(1, "low", "t", now=0.0)
    assert (x.expires_at, x.deadline) == (math.inf, math.inf)
    assert fc.queue.push(0.0, x).accepted
    assert fc.queue.expire(1e9) == [] and fc.queue.next_expiry() == math.inf


# (queue params, pushes into band "high", how many are accepted): hasCapacity's Len+1 > CapacityRequests rule.
CAP_CASES = [
    ({}, 6000, 6000),  # MaxRequests 0 by default: no limit
    ({"capacity": {"high": 3}}, 5, 3),
    ({"max_items": 2}, 4, 2),
]


@pytest.mark.parametrize(("params", "pushes", "accepted"), CAP_CASES)
@pytest.mark.parametrize("queue", ["fcfs", "strict-priority", "edf", "wfq-class", "wfq-tenant"])
def test_request_cap_default_none(queue: str, params: dict, pushes: int, accepted: int) -> None:
    q = make_queue(queue, **params)
    got = [q.push(0.0, item(rid, "high")).accepted for rid in range(pushes)]
    assert got == [True] * accepted + [False] * (pushes - accepted)
