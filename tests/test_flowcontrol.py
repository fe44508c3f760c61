"""Flow control: priority mapping, queues (order, capacity, eviction, TTL, fair shares), saturation, admission."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import yaml

from policies.errors import PolicyConfigError
from policies.flowcontrol.admission import AlwaysAdmit, ProbabilisticAdmitter, ShedSheddable
from policies.flowcontrol.config import FlowControlConfig, build_flow_control
from policies.flowcontrol.priority import (
    CLASS_PRIORITY,
    DEFAULT_SHARES,
    LATENCY_TARGETS_S,
    PRIORITY_CLASSES,
    class_to_priority,
    is_sheddable,
    priority_to_class,
)
from policies.flowcontrol.queues import EdfQueue, FcfsQueue, StrictPriorityQueue
from policies.flowcontrol.registration import register
from policies.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from policies.flowcontrol.types import FlowQueue, QueuedRequest
from policies.flowcontrol.wfq import WfqClassQueue, WfqTenantQueue
from policies.registry import Registry
from policies.routing.types import EndpointState

INF = math.inf
BIG = dict.fromkeys(PRIORITY_CLASSES, 10**6)
QUEUE_TYPES = ("fcfs", "strict-priority", "wfq-class", "wfq-tenant", "edf")


def item(rid, cls="normal", *, prio=None, tenant="t", t=0.0, deadline=INF, expires=INF, size=1) -> QueuedRequest:
    return QueuedRequest(
        request_id=rid,
        priority=CLASS_PRIORITY[cls] if prio is None else prio,
        priority_class=cls,
        tenant=tenant,
        enqueued_at=t,
        deadline=deadline,
        expires_at=expires,
        size=size,
    )


def registry() -> Registry:
    reg = Registry()
    register(reg)
    return reg


def make_queue(name: str, **params) -> FlowQueue:
    return registry().build("queue", name, params, np.random.default_rng(0))  # type: ignore[return-value]


def drain(q: FlowQueue, now: float = 0.0) -> list[int]:
    out = []
    while (x := q.pop(now)) is not None:
        out.append(x.request_id)
    return out


# -- priority mapping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "priority"),
    [("critical", 2), ("high", 1), ("normal", 0), ("low", -1), (0, 2), (1, 1), (2, 0), (3, -1), (np.int8(3), -1)],
)
def test_class_to_priority(given, priority) -> None:
    assert class_to_priority(given) == priority


@pytest.mark.parametrize(
    ("priority", "cls"),
    [(7, "critical"), (2, "critical"), (1, "high"), (0, "normal"), (-1, "low"), (-5, "low")],
)
def test_priority_to_class(priority, cls) -> None:
    assert priority_to_class(priority) == cls
    assert is_sheddable(priority) is (priority < 0)


def test_mapping_round_trips_and_matches_odhsim() -> None:
    from odhsim.workload.schema import PRIORITY_CLASSES as ODHSIM_CLASSES

    assert PRIORITY_CLASSES == ODHSIM_CLASSES == ("critical", "high", "normal", "low")
    for i, cls in enumerate(PRIORITY_CLASSES):
        assert priority_to_class(class_to_priority(cls)) == cls
        assert class_to_priority(i) == class_to_priority(cls)
    assert dict(DEFAULT_SHARES) == {"critical": 80, "high": 15, "normal": 4, "low": 1}
    assert dict(LATENCY_TARGETS_S) == {"critical": 1.0, "high": 3.0, "normal": 10.0, "low": INF}
    assert [is_sheddable(class_to_priority(c)) for c in PRIORITY_CLASSES] == [False, False, False, True]


@pytest.mark.parametrize("bad", ["urgent", 4, -1])
def test_class_to_priority_rejects_unknown(bad) -> None:
    with pytest.raises(ValueError, match=r"unknown priority class|out of range"):
        class_to_priority(bad)


def test_register_adds_every_policy_once() -> None:
    reg = registry()
    assert reg.names("queue") == sorted(QUEUE_TYPES)
    assert reg.names("saturation-detector") == ["concurrency", "utilization"]
    assert reg.names("admission") == ["always", "probabilistic", "shed-sheddable"]
    with pytest.raises(PolicyConfigError, match="duplicate"):
        register(reg)


# -- orderings -------------------------------------------------------------------------------------------------

MIXED = [  # (rid, class, deadline)
    (1, "low", 9.0),
    (2, "normal", 5.0),
    (3, "critical", 7.0),
    (4, "normal", 1.0),
    (5, "high", 5.0),
    (6, "critical", INF),
    (7, "low", 1.0),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fcfs", [1, 2, 3, 4, 5, 6, 7]),
        ("strict-priority", [3, 6, 5, 2, 4, 1, 7]),
        ("edf", [4, 7, 2, 5, 3, 1, 6]),  # deadline, ties (2 and 5 at 5.0; 4 and 7 at 1.0) first come first
    ],
)
def test_dispatch_order(name, expected) -> None:
    q = make_queue(name)
    for rid, cls, deadline in MIXED:
        assert q.push(0.0, item(rid, cls, deadline=deadline)).accepted
    assert len(q) == 7
    assert q.lengths() == {"critical": 2, "high": 1, "normal": 2, "low": 2}
    assert drain(q) == expected
    assert len(q) == 0 and q.pop(0.0) is None


def test_strict_priority_uses_the_integer_priority_inside_a_class() -> None:
    q = StrictPriorityQueue()
    q.push(0, item(1, "low", prio=-3))
    q.push(0, item(2, "low", prio=-1))
    q.push(0, item(3, "critical", prio=2))
    q.push(0, item(4, "critical", prio=5))
    assert drain(q) == [4, 3, 2, 1]


def test_duplicate_and_unknown_class_are_errors() -> None:
    q = FcfsQueue()
    q.push(0, item(1))
    with pytest.raises(ValueError, match="already queued"):
        q.push(0, item(1))
    with pytest.raises(ValueError, match="unknown priority class"):
        q.push(0, item(2, "normal").__class__(2, 0, "urgent", "t", 0.0))
    with pytest.raises(ValueError, match="size must be > 0"):
        item(3, size=0)


def test_remove() -> None:
    q = EdfQueue()
    for rid in range(5):
        q.push(0, item(rid, deadline=float(rid)))
    assert q.remove(2).request_id == 2
    assert q.remove(2) is None and q.remove(99) is None
    assert 2 not in q and 3 in q
    assert drain(q) == [0, 1, 3, 4]


# -- capacity and eviction -------------------------------------------------------------------------------------


def test_capacity_rejection_messages() -> None:
    q = StrictPriorityQueue(capacity={"critical": 2})
    assert q.push(0, item(1, "critical")).accepted
    assert q.push(0, item(2, "critical")).accepted
    r = q.push(0, item(3, "critical"))
    assert (r.accepted, r.reason, r.evicted) == (False, "capacity: band critical full (2)", ())
    assert q.push(0, item(4, "high")).accepted  # other bands keep their own 5,000
    q2 = FcfsQueue(max_items=2)
    q2.push(0, item(1))
    q2.push(0, item(2))
    assert q2.push(0, item(3, "critical")).reason == "capacity: queue full (max_items 2)"
    assert len(q2) == 2


def test_default_band_capacity_is_llm_d_5000() -> None:
    q = FcfsQueue()
    for rid in range(5000):
        assert q.push(0, item(rid, "high")).accepted
    assert q.push(0, item(5000, "high")).reason == "capacity: band high full (5000)"


# Each case: queue params, queued items (rid, class, priority), the arrival, expected evicted rid or rejection.
EVICTION_CASES = {
    "band full: lowest priority goes first": (
        {"capacity": {"low": 3}},
        [(1, "low", -1), (2, "low", -2), (3, "low", -1)],
        (9, "low", -1),
        2,
    ),
    "band full: equal lowest priority, the most recent goes": (
        {"capacity": {"low": 3}},
        [(1, "low", -2), (2, "low", -2), (3, "low", -1)],
        (9, "low", -1),
        2,
    ),
    "band full: never for an arrival of equal priority": (
        {"capacity": {"low": 2}},
        [(1, "low", -1), (2, "low", -1)],
        (9, "low", -1),
        "capacity: band low full (2)",
    ),
    "band full: never a victim from another band": (
        {"capacity": {"critical": 1}},
        [(1, "critical", 2), (2, "low", -1)],
        (9, "critical", 2),
        "capacity: band critical full (1)",
    ),
    "queue full: the lowest sheddable anywhere, most recent first": (
        {"max_items": 4},
        [(1, "low", -1), (2, "normal", 0), (3, "low", -1), (4, "high", 1)],
        (9, "critical", 2),
        3,
    ),
    "queue full: non-sheddable items are never evicted": (
        {"max_items": 2},
        [(1, "normal", 0), (2, "high", 1)],
        (9, "critical", 2),
        "capacity: queue full (max_items 2)",
    ),
    "queue full: a sheddable arrival may evict a lower sheddable": (
        {"max_items": 2},
        [(1, "low", -3), (2, "low", -1)],
        (9, "low", -2),
        1,
    ),
}


@pytest.mark.parametrize("name", QUEUE_TYPES)
@pytest.mark.parametrize("case", list(EVICTION_CASES))
def test_eviction(name, case) -> None:
    params, queued, (rid, cls, prio), expected = EVICTION_CASES[case]
    q = make_queue(name, **params)
    for r, c, p in queued:
        assert q.push(0, item(r, c, prio=p)).accepted
    before = len(q)
    result = q.push(0, item(rid, cls, prio=prio))
    if isinstance(expected, str):
        assert (result.accepted, result.reason, result.evicted) == (False, expected, ())
        assert len(q) == before and rid not in q
    else:
        assert result.accepted and [e.request_id for e in result.evicted] == [expected]
        assert len(q) == before and rid in q and expected not in q
        assert sorted(drain(q)) == sorted({r for r, _, _ in queued} - {expected} | {rid})


# -- TTL ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUEUE_TYPES)
def test_ttl_expiry(name) -> None:
    q = make_queue(name)
    expiries = {1: 5.0, 2: INF, 3: 2.0, 4: 8.0, 5: 2.0, 6: 5.0}
    for rid, exp in expiries.items():
        q.push(0.0, item(rid, "normal", expires=exp))
    assert q.next_expiry() == 2.0
    assert q.expire(1.9) == [] and len(q) == 6
    assert [x.request_id for x in q.expire(2.0)] == [3, 5]  # expires_at <= now, earliest first
    assert q.next_expiry() == 5.0
    # pop at 6.0 never returns 1 or 6 (expired): it skips them, they stay counted until expire() returns them
    popped = q.pop(6.0)
    assert popped is not None and popped.request_id in (2, 4)
    assert len(q) == 3 and q.next_expiry() == 5.0
    assert [x.request_id for x in q.expire(6.0)] == [1, 6]
    assert q.expire(6.0) == [] and len(q) == 1
    assert q.next_expiry() == (8.0 if popped.request_id == 2 else INF)
    q.remove(4 if popped.request_id == 2 else 2)
    assert q.next_expiry() == INF and len(q) == 0


def test_expired_items_can_still_be_removed_or_evicted() -> None:
    q = FcfsQueue(capacity={"low": 2})
    q.push(0, item(1, "low", prio=-2, expires=1.0))
    q.push(0, item(2, "low", prio=-2, expires=1.0))
    assert q.pop(5.0) is None  # both expired: nothing to dispatch, both still queued
    assert len(q) == 2 and q.next_expiry() == 1.0
    r = q.push(5.0, item(3, "low", prio=-1))
    assert [e.request_id for e in r.evicted] == [2]
    assert q.remove(1).request_id == 1
    assert q.expire(5.0) == [] and drain(q, 5.0) == [3]


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


# -- configuration ---------------------------------------------------------------------------------------------

EXAMPLE = """
flow_control:
  queue: {type: wfq-class, params: {shares: {critical: 80, high: 15, normal: 4, low: 1}}}
  saturation: {type: utilization, params: {queue_depth_threshold: 5, kv_cache_threshold: 0.8, staleness_s: 0.2}}
  admission: {type: shed-sheddable}
  gate_dispatch_on_saturation: true
  ttl_s: {low: 60}
  deadline: slo
"""


def test_config_example_builds_the_bundle() -> None:
    cfg = FlowControlConfig.model_validate(yaml.safe_load(EXAMPLE)["flow_control"])
    fc = build_flow_control(cfg, np.random.default_rng(0), registry())
    assert isinstance(fc.queue, WfqClassQueue) and isinstance(fc.queue, FlowQueue)
    assert isinstance(fc.saturation, UtilizationDetector) and isinstance(fc.admission, ShedSheddable)
    assert fc.gate_dispatch_on_saturation and fc.deadline == "slo" and fc.ttl_s == {"low": 60.0}
    assert fc.ttl_for_class("low") == 60.0 and fc.ttl_for_class("critical") == INF
    assert cfg.ttl_for_class("low") == 60.0 and cfg.ttl_for_class("high") == INF
    assert fc.may_dispatch(0.99) and not fc.may_dispatch(1.0)
    assert fc.deadline_for(10.0, "critical", ttft_target_s=1.0) == 11.0
    assert fc.deadline_for(10.0, "low", ttft_target_s=None) == INF
    x = fc.make_item(7, 3, "acme", now=10.0, ttft_target_s=None, size=12)
    got = (x.priority, x.priority_class, x.tenant, x.expires_at, x.deadline, x.size)
    assert got == (-1, "low", "acme", 70.0, INF, 12)


def test_config_defaults_are_llm_d_flow_control() -> None:
    cfg = FlowControlConfig()
    assert (cfg.queue.type, cfg.saturation.type, cfg.admission.type) == ("strict-priority", "utilization", "always")
    assert cfg.gate_dispatch_on_saturation and cfg.deadline == "ttl"
    assert cfg.ttl_s == dict.fromkeys(PRIORITY_CLASSES, 60.0)
    fc = build_flow_control(None, np.random.default_rng(0))
    assert isinstance(fc.queue, StrictPriorityQueue)
    assert fc.deadline_for(1.0, "high", ttft_target_s=3.0) == 61.0  # ttl mode ignores the TTFT target
    assert build_flow_control({"queue": "edf", "ttl_s": {}}, np.random.default_rng(0)).ttl_s == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"queue": "lifo"}, "unknown queue 'lifo'; known queues: edf, fcfs, strict-priority, wfq-class, wfq-tenant"),
        ({"saturation": {"type": "magic"}}, "known saturation-detectors: concurrency, utilization"),
        ({"admission": "maybe"}, "known admissions: always, probabilistic, shed-sheddable"),
        ({"queue": {"type": "fcfs", "params": {"capacity": {"urgent": 3}}}}, "unknown priority class 'urgent'"),
        ({"queue": {"type": "fcfs", "params": {"fifo": True}}}, "fifo"),
        ({"ttl_s": {"urgent": 3}}, "unknown priority class 'urgent'"),
        ({"ttl_s": {"low": -1}}, "greater than 0"),
        ({"deadline": "soon"}, "'ttl' or 'slo'"),
        ({"gate": True}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(raw, message) -> None:
    with pytest.raises(ValueError, match=message):
        FlowControlConfig.model_validate(raw)


def test_build_with_a_registry_missing_the_type_lists_known_ones() -> None:
    reg = Registry()
    with pytest.raises(PolicyConfigError, match=r"flow_control: unknown queue 'fcfs'; known queues: \(none\)"):
        build_flow_control({"queue": "fcfs"}, np.random.default_rng(0), reg)


def test_same_inputs_same_outputs() -> None:
    def run(seed: int) -> list:
        fc = build_flow_control({"queue": "wfq-tenant", "admission": "probabilistic"}, np.random.default_rng(seed))
        rng = np.random.default_rng(99)
        out = []
        for rid in range(500):
            cls = PRIORITY_CLASSES[int(rng.integers(4))]
            if fc.admission.admit(0.0, class_to_priority(cls), 0.25).admitted:
                fc.queue.push(0.0, item(rid, cls, tenant=str(rng.integers(3))))
        out += drain(fc.queue)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


# -- heavy churn: lazy deletion and compaction stay correct and bounded ------------------------------------------


@pytest.mark.parametrize("name", QUEUE_TYPES)
def test_heavy_churn_against_a_reference(name) -> None:
    """30,000 random operations with many removals and expiries (so every structure compacts) against a plain
    dict; the order of fcfs / strict-priority / edf is checked exactly, WFQ within its flow."""
    rng = np.random.default_rng(11)
    q = make_queue(name, capacity=BIG)
    model: dict[int, tuple[QueuedRequest, int]] = {}
    now, rid = 0.0, 0
    for _ in range(30_000):
        op = rng.random()
        if op < 0.5:
            cls = PRIORITY_CLASSES[int(rng.integers(4))]
            x = item(
                rid,
                cls,
                prio=CLASS_PRIORITY[cls] - int(rng.integers(2)) * (cls == "low"),
                tenant="abc"[int(rng.integers(3))],
                t=now,
                deadline=now + float(rng.integers(0, 20)),
                expires=now + float(rng.exponential(30.0)) if rng.random() < 0.5 else INF,
            )
            assert q.push(now, x).accepted
            model[rid] = (x, rid)
            rid += 1
        elif op < 0.7 and model:
            victim = int(rng.choice(list(model)))
            assert q.remove(victim) == model.pop(victim)[0]
        elif op < 0.9:
            ready = [(x, o) for x, o in model.values() if x.expires_at > now]
            got = q.pop(now)
            if not ready:
                assert got is None
                continue
            if name == "wfq-class":
                ready = [(x, o) for x, o in ready if x.priority_class == got.priority_class]
            elif name == "wfq-tenant":
                ready = [(x, o) for x, o in ready if x.tenant == got.tenant]
            rank = {
                "fcfs": lambda x, o: o,
                "edf": lambda x, o: (x.deadline, o),
            }.get(name, lambda x, o: (-x.priority, o))
            assert got == min(ready, key=lambda p: rank(*p))[0]
            del model[got.request_id]
        elif op < 0.95:
            got = q.expire(now)
            assert {x.request_id for x in got} == {r for r, (x, _) in model.items() if x.expires_at <= now}
            for x in got:
                del model[x.request_id]
        else:
            now += float(rng.exponential(2.0))
        assert len(q) == len(model)
    # lazy deletion keeps every internal structure within twice the live items plus a constant
    live = len(model)
    assert len(q._exp) <= 2 * live + 65
    assert all(len(h) <= 2 * live + 65 for h in q._shed.values())
