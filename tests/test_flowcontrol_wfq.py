"""Weighted fair queuing in flow control: per-class shares (wfq-class) and per-tenant shares (wfq-tenant)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from policies.errors import PolicyConfigError
from policies.flowcontrol.priority import DEFAULT_SHARES, PRIORITY_CLASSES
from policies.flowcontrol.types import FlowQueue
from policies.flowcontrol.wfq import WfqClassQueue, WfqTenantQueue
from tests.test_flowcontrol_helpers import BIG, drain, item, registry

# -- weighted fair queuing -------------------------------------------------------------------------------------


def backlog(q: FlowQueue, counts: dict[str, int], start: int = 0, tenant="t", size=None) -> int:
    rid = start
    for cls, n in counts.items():
        for _ in range(n):
            rid += 1
            q.push(0.0, item(rid, cls, tenant=tenant, size=(size or {}).get(cls, 1)))
    return rid


def shares_of(q: FlowQueue, pops: int, key=lambda x: x.priority_class, weight=lambda x: 1) -> dict:
    got: Counter = Counter()
    for _ in range(pops):
        x = q.pop(0.0)
        assert x is not None
        got[key(x)] += weight(x)
    total = sum(got.values())
    return {k: v / total for k, v in got.items()}


def test_wfq_class_shares_with_every_class_backlogged() -> None:
    q = WfqClassQueue(capacity=BIG)
    backlog(q, dict.fromkeys(PRIORITY_CLASSES, 20_000))
    got = shares_of(q, 10_000)
    for cls, share in DEFAULT_SHARES.items():
        assert abs(got[cls] - share / 100) <= 0.01, (cls, got)  # within 1 percentage point
    for cls in ("critical", "high"):
        assert abs(got[cls] / (DEFAULT_SHARES[cls] / 100) - 1) <= 0.05  # within 5% relative
    # measured: SFQ hands out exactly 8000 / 1500 / 400 / 100
    assert got == {"critical": 0.8, "high": 0.15, "normal": 0.04, "low": 0.01}


def test_wfq_class_shares_are_in_size_units() -> None:
    q = WfqClassQueue(shares={"critical": 1, "high": 1, "normal": 1, "low": 1}, capacity=BIG)
    backlog(q, dict.fromkeys(PRIORITY_CLASSES, 5000), size={"critical": 4})
    got = shares_of(q, 8000, weight=lambda x: x.size)
    for cls in PRIORITY_CLASSES:
        assert abs(got[cls] - 0.25) <= 0.01, got


def test_wfq_class_is_work_conserving() -> None:
    q = WfqClassQueue(capacity=BIG)
    backlog(q, {"critical": 20_000, "normal": 20_000, "low": 20_000})  # high empty
    got = shares_of(q, 8500)
    for cls in ("critical", "normal", "low"):
        assert abs(got[cls] - DEFAULT_SHARES[cls] / 85) <= 0.005, got
    q2 = WfqClassQueue()
    backlog(q2, {"low": 50})
    assert drain(q2) == list(range(1, 51))  # alone, the smallest share gets everything


def test_wfq_class_gives_no_burst_credit_to_an_idle_class() -> None:
    """A class idle for a long time gets at most its weighted share plus one item after it returns (SFQ bound)."""
    q = WfqClassQueue(capacity=BIG)
    rid = backlog(q, {"critical": 30_000, "normal": 30_000})
    for _ in range(5000):  # high idle meanwhile
        q.pop(0.0)
    backlog(q, {"high": 10_000}, start=rid)
    share = DEFAULT_SHARES["high"] / (DEFAULT_SHARES["critical"] + DEFAULT_SHARES["high"] + DEFAULT_SHARES["normal"])
    for window in (1, 10, 100, 1000):
        fresh = WfqClassQueue(capacity=BIG)
        r = backlog(fresh, {"critical": 30_000, "normal": 30_000})
        for _ in range(5000):
            fresh.pop(0.0)
        backlog(fresh, {"high": 10_000}, start=r)
        high = sum(fresh.pop(0.0).priority_class == "high" for _ in range(window))
        assert high <= math.ceil(window * share) + 1, (window, high)
        assert high >= math.floor(window * share) - 1, (window, high)


def test_wfq_class_restarts_level_after_going_idle() -> None:
    q = WfqClassQueue(capacity=BIG)
    backlog(q, {"critical": 1000})
    drain(q)  # critical alone ran far ahead in virtual time; the queue is idle now
    backlog(q, dict.fromkeys(PRIORITY_CLASSES, 2000), start=1000)
    got = shares_of(q, 1000)
    assert abs(got["critical"] - 0.8) <= 0.01, got


def test_wfq_class_rejects_bad_shares() -> None:
    with pytest.raises(PolicyConfigError, match="missing: low"):
        registry().validate("queue", "wfq-class", {"shares": {"critical": 1, "high": 1, "normal": 1}})
    with pytest.raises(PolicyConfigError, match="greater than 0"):
        registry().validate("queue", "wfq-class", {"shares": {"critical": 0, "high": 1, "normal": 1, "low": 1}})


def test_wfq_tenant_shares_with_default_weight() -> None:
    q = WfqTenantQueue(weights={"a": 3.0, "b": 1.0}, capacity=BIG)  # "c" is unknown: default weight 1
    rid = 0
    for tenant in ("a", "b", "c"):
        rid = backlog(q, {"normal": 10_000}, start=rid, tenant=tenant)
    got = shares_of(q, 10_000, key=lambda x: x.tenant)
    assert abs(got["a"] - 0.6) <= 0.01 and abs(got["b"] - 0.2) <= 0.01 and abs(got["c"] - 0.2) <= 0.01, got


def test_wfq_tenant_inside_a_tenant_strict_priority_then_fcfs() -> None:
    q = WfqTenantQueue()
    for rid, cls in enumerate(["low", "normal", "critical", "normal", "critical"]):
        q.push(0, item(rid, cls, tenant="a"))
    assert drain(q) == [2, 4, 1, 3, 0]


def test_wfq_tenant_work_conserving_and_no_burst() -> None:
    q = WfqTenantQueue(capacity=BIG)
    rid = backlog(q, {"normal": 20_000}, tenant="a")
    rid = backlog(q, {"normal": 20_000}, start=rid, tenant="b")
    for _ in range(4000):
        q.pop(0.0)
    backlog(q, {"normal": 5000}, start=rid, tenant="c")  # c returns from idle: one third, not a burst
    got = Counter(q.pop(0.0).tenant for _ in range(300))
    assert 99 <= got["c"] <= 101, got


def test_wfq_tenant_within_bands_serves_bands_strictly_and_tenants_fairly() -> None:
    q = WfqTenantQueue(within_bands=True, capacity=BIG)
    rid = 0
    for tenant in ("a", "b"):
        rid = backlog(q, {"high": 100, "normal": 100}, start=rid, tenant=tenant)
    first = [q.pop(0.0) for _ in range(200)]
    assert {x.priority_class for x in first} == {"high"}
    assert Counter(x.tenant for x in first[:100]) == {"a": 50, "b": 50}
    assert Counter(x.tenant for x in (q.pop(0.0) for _ in range(200))) == {"a": 100, "b": 100}
