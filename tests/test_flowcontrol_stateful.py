"""Stateful hypothesis tests of every flow-control queue against a plain-list model.

Random push / pop / expire / remove / time steps (now never decreases) on small capacities, so eviction and
rejection happen often. Checked after every step: len == accepted - popped - expired - removed - evicted (and
pushed == accepted + rejected), per-class lengths and next_expiry match the model, no item is lost or returned
twice. Checked on every pop: never an expired item, never None while a dispatchable item waits, and the order rule
of the policy (FCFS: the oldest; strict priority: a max-priority item, FCFS among equals; EDF: a min-deadline
item, FCFS among equals; WFQ: inside its flow, max priority then FCFS). Eviction picks exactly llm-d's victim.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.flowcontrol.priority import PRIORITY_CLASSES
from policies.flowcontrol.registration import register
from policies.flowcontrol.types import QueuedRequest
from policies.registry import Registry

INF = math.inf
CAPACITY = {"critical": 3, "high": 3, "normal": 3, "low": 4}
MAX_ITEMS = 10
PRIORITIES = {"critical": (2, 3), "high": (1,), "normal": (0,), "low": (-1, -2)}
TENANTS = ("a", "b", "c")


def _victim(candidates: list[tuple[QueuedRequest, int]], arrival: QueuedRequest) -> int | None:
    """llm-d's rule: priority < 0 and below the arrival's; lowest priority, then the most recent."""
    ok = [(x.priority, -o, x.request_id) for x, o in candidates if x.priority < 0 and x.priority < arrival.priority]
    return min(ok)[2] if ok else None


def _expected_first(name: str, bands: bool, ready: list[tuple[QueuedRequest, int]], got: QueuedRequest) -> list[int]:
    """Ids the policy may return. For WFQ only the head of the popped item's own flow is fixed (fairness between
    flows is tested elsewhere); with bands, the band must be the highest one waiting. Otherwise the head of all."""
    if bands:
        top = max(x.priority for x, _ in ready)
        assert got.priority == top, "a lower band was served while a higher one waited"
        ready = [(x, o) for x, o in ready if x.priority == top]
    if name == "wfq-class":
        ready = [(x, o) for x, o in ready if x.priority_class == got.priority_class]
    elif name == "wfq-tenant":
        ready = [(x, o) for x, o in ready if x.tenant == got.tenant]
    if name == "fcfs":
        rank = lambda x, o: o  # noqa: E731
    elif name == "edf":
        rank = lambda x, o: (-x.priority, x.deadline, o)  # noqa: E731
    else:  # strict-priority, and inside a WFQ flow: strict priority then FCFS
        rank = lambda x, o: (-x.priority, o)  # noqa: E731
    best = min(rank(x, o) for x, o in ready)
    return [x.request_id for x, o in ready if rank(x, o) == best]


def make_machine(name: str, **extra) -> type[RuleBasedStateMachine]:
    bands = name in ("strict-priority", "edf") or bool(extra.get("within_bands"))

    class QueueMachine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            reg = Registry()
            register(reg)
            params = {"capacity": CAPACITY, "max_items": MAX_ITEMS, **extra}
            self.q = reg.build("queue", name, params, np.random.default_rng(0))
            self.now = 0.0
            self.next_id = 0
            self.order = 0
            self.model: dict[int, tuple[QueuedRequest, int]] = {}
            self.returned: set[int] = set()
            self.accepted_ids: set[int] = set()
            self.n = dict.fromkeys(("pushed", "accepted", "rejected", "popped", "expired", "removed", "evicted"), 0)

        def _give_back(self, rid: int, how: str) -> QueuedRequest:
            assert rid not in self.returned, f"request {rid} returned twice"
            assert rid in self.model, f"request {rid} was not queued"
            self.returned.add(rid)
            self.n[how] += 1
            return self.model.pop(rid)[0]

        @rule(
            cls=st.sampled_from(PRIORITY_CLASSES),
            pick=st.integers(0, 1),
            tenant=st.sampled_from(TENANTS),
            ttl=st.one_of(st.none(), st.floats(0.0, 5.0)),
            slack=st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, 4.0])),
            size=st.integers(1, 4),
        )
        def push(self, cls, pick, tenant, ttl, slack, size) -> None:
            prios = PRIORITIES[cls]
            x = QueuedRequest(
                request_id=self.next_id,
                priority=prios[pick % len(prios)],
                priority_class=cls,
                tenant=tenant,
                enqueued_at=self.now,
                deadline=INF if slack is None else self.now + slack,
                expires_at=INF if ttl is None else self.now + ttl,
                size=size,
            )
            self.next_id += 1
            live = list(self.model.values())
            in_band = [(y, o) for y, o in live if y.priority_class == cls]
            if len(in_band) >= CAPACITY[cls]:
                expected_victim, reason = _victim(in_band, x), f"capacity: band {cls} full ({CAPACITY[cls]})"
                must_evict = True
            elif len(live) >= MAX_ITEMS:
                expected_victim, reason = _victim(live, x), f"capacity: queue full (max_items {MAX_ITEMS})"
                must_evict = True
            else:
                expected_victim, reason, must_evict = None, "", False
            result = self.q.push(self.now, x)
            self.n["pushed"] += 1
            if must_evict and expected_victim is None:
                assert (result.accepted, result.reason, result.evicted) == (False, reason, ())
                self.n["rejected"] += 1
                return
            assert result.accepted and result.reason == ""
            assert [e.request_id for e in result.evicted] == ([] if expected_victim is None else [expected_victim])
            for e in result.evicted:
                assert self._give_back(e.request_id, "evicted") == e
            self.order += 1
            self.model[x.request_id] = (x, self.order)
            self.accepted_ids.add(x.request_id)
            self.n["accepted"] += 1

        @rule()
        def pop(self) -> None:
            ready = [(x, o) for x, o in self.model.values() if x.expires_at > self.now]
            got = self.q.pop(self.now)
            if not ready:
                assert got is None
                return
            assert got is not None, "pop returned None while a dispatchable item waits"
            assert got.expires_at > self.now, "pop returned an expired item"
            assert got.request_id in _expected_first(name, bands, ready, got)
            assert self._give_back(got.request_id, "popped") == got

        @rule()
        def expire(self) -> None:
            due = sorted((x.expires_at, o, rid) for rid, (x, o) in self.model.items() if x.expires_at <= self.now)
            got = self.q.expire(self.now)
            assert sorted(x.request_id for x in got) == sorted(rid for _, _, rid in due)
            assert [x.expires_at for x in got] == sorted(x.expires_at for x in got)
            for x in got:
                assert self._give_back(x.request_id, "expired") == x

        @precondition(lambda self: self.next_id > 0)
        @rule(data=st.data())
        def remove(self, data) -> None:
            rid = data.draw(st.integers(0, self.next_id))  # sometimes gone or never pushed
            got = self.q.remove(rid)
            if rid in self.model:
                assert got is not None and self._give_back(rid, "removed") == got
            else:
                assert got is None

        @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]))
        def advance(self, dt) -> None:
            self.now += dt

        @invariant()
        def counts_agree(self) -> None:
            n = self.n
            assert n["pushed"] == n["accepted"] + n["rejected"]
            assert len(self.q) == len(self.model)
            assert len(self.q) == n["accepted"] - n["popped"] - n["expired"] - n["removed"] - n["evicted"]
            by_class = dict.fromkeys(PRIORITY_CLASSES, 0)
            for x, _ in self.model.values():
                by_class[x.priority_class] += 1
            assert self.q.lengths() == by_class
            assert self.q.next_expiry() == min((x.expires_at for x, _ in self.model.values()), default=INF)
            assert all(rid in self.q for rid in self.model)

        def teardown(self) -> None:
            if not hasattr(self, "q"):
                return
            while (x := self.q.pop(self.now)) is not None:
                self._give_back(x.request_id, "popped")
            for x in self.q.expire(INF):
                self._give_back(x.request_id, "expired")
            assert len(self.q) == 0 and not self.model
            assert self.returned == self.accepted_ids  # nothing lost, nothing invented

    QueueMachine.__name__ = f"QueueMachine_{name.replace('-', '_')}"
    return QueueMachine


SETTINGS = settings(max_examples=150, stateful_step_count=60, deadline=None)


def _case(name: str, **extra):
    case = make_machine(name, **extra).TestCase
    case.settings = SETTINGS
    return case


TestFcfs = _case("fcfs")
TestStrictPriority = _case("strict-priority")
TestEdf = _case("edf")
TestWfqClass = _case("wfq-class")
TestWfqTenant = _case("wfq-tenant")
TestWfqTenantWithinBands = _case("wfq-tenant", within_bands=True)
