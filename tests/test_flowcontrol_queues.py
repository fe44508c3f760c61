"""Flow-control queues: dispatch order, capacity and eviction, TTL expiry, and lazy deletion under heavy churn."""

from __future__ import annotations

import numpy as np
import pytest

from policies.flowcontrol.priority import CLASS_PRIORITY, PRIORITY_CLASSES
from policies.flowcontrol.queues import EdfQueue, FcfsQueue, StrictPriorityQueue
from policies.flowcontrol.types import QueuedRequest
from tests.test_flowcontrol_helpers import BIG, INF, QUEUE_TYPES, drain, item, make_queue

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
        ("edf", [3, 6, 5, 4, 2, 7, 1]),  # bands from high to low, deadline inside a band (llm-d's EDF per band)
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


def test_default_band_capacity_is_unlimited_as_llm_d() -> None:
    q = FcfsQueue()  # llm-d: band and global MaxRequests default to 0, no limit (registry/config.go)
    for rid in range(6000):
        assert q.push(0, item(rid, "high")).accepted
    assert len(q) == 6000


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
                "edf": lambda x, o: (-x.priority, x.deadline, o),
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
