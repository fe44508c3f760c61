"""What every flow-control queue shares: capacity, eviction under pressure, TTL expiry, removal, per-class counts.

Capacity (llm-d, pkg/epp/flowcontrol/registry/config.go and controller/internal/processor.go `hasCapacity`): a
band's MaxRequests and the global MaxRequests default to 0, which llm-d treats as no limit, so by default nothing
caps the request count here either (per-class `capacity` and the total `max_items` are None). llm-d's default cap
is on bytes (1 GB per band); these queues do not see request bodies, so they have no byte cap (docs/upstream.md).
When an arriving item finds no room it may evict one queued item with priority < 0 whose priority is strictly
lower than its own; the victim is the lowest priority, then the most recently enqueued. (llm-d applies this
priority-then-newest order, eviction/ordering/priority_time.go, to dispatched in-flight requests; here it picks
among queued ones.) Otherwise the arrival is rejected with a reason naming the full band or queue.

Every structure is a heap or deque with lazy deletion: a removed, evicted or expired item is marked and skipped
when it reaches the front; a structure whose dead entries outnumber its live ones is rebuilt (amortised O(1)).
Operations are O(log n). Ties are broken by a per-queue sequence counter, so runs are deterministic.

Time-to-live: an item with expires_at <= now is never popped. `pop` and `expire` first move every expired item
to a pending list (still counted by len() and lengths() until `expire` returns it or it is removed or evicted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from heapq import heapify, heappop, heappush
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from policies.flowcontrol.priority import PRIORITY_CLASSES
from policies.flowcontrol.types import PushResult, QueuedRequest
from policies.registry import PolicyParams

DEFAULT_BAND_CAPACITY: int | None = None
"""llm-d's default per-band request capacity: MaxRequests 0, no limit (the 5,000 in its comment is never applied)."""

_QUEUED, _PENDING, _DEAD = 0, 1, 2
_COMPACT_SLACK = 64
_INF = math.inf


class QueueParams(PolicyParams):
    """Capacity shared by every queue policy: per class (a missing class or None: no limit) and an optional total."""

    capacity: dict[str, Annotated[int, Field(ge=0)] | None] = Field(
        default_factory=lambda: dict.fromkeys(PRIORITY_CLASSES, DEFAULT_BAND_CAPACITY)
    )
    max_items: Annotated[int, Field(ge=0)] | None = None

    @field_validator("capacity")
    @classmethod
    def _known_classes(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        unknown = sorted(set(v) - set(PRIORITY_CLASSES))
        if unknown:
            raise ValueError(f"unknown priority class {unknown[0]!r}; known: {', '.join(PRIORITY_CLASSES)}")
        return {c: v.get(c, DEFAULT_BAND_CAPACITY) for c in PRIORITY_CLASSES}


class _Slot:
    """A queued item plus its bookkeeping: seq (enqueue order) and state (queued / pending expiry / dead)."""

    __slots__ = ("item", "seq", "state")

    def __init__(self, item: QueuedRequest, seq: int) -> None:
        self.item = item
        self.seq = seq
        self.state = _QUEUED


class QueueBase:
    """Capacity, eviction, TTL, removal and per-class counts; subclasses supply the dispatch order.

    Subclasses implement `_order_push(slot)`, `_order_pop() -> slot | None` (the next slot in state _QUEUED,
    removed from the order) and `_order_discard(slot)` (a queued slot left other than by `_order_pop`; its state
    is already set, so lazy structures just count the garbage).
    """

    TYPE = ""
    Params: type[PolicyParams] = QueueParams
    __slots__ = ("_cap", "_class_len", "_exp", "_live", "_max", "_n_exp", "_n_shed", "_pending", "_seq", "_shed")

    def __init__(self, capacity: Mapping[str, int | None] | None = None, max_items: int | None = None) -> None:
        caps: dict[str, int | None] = dict.fromkeys(PRIORITY_CLASSES, DEFAULT_BAND_CAPACITY)
        if capacity:
            unknown = sorted(set(capacity) - set(PRIORITY_CLASSES))
            if unknown:
                raise ValueError(f"unknown priority class {unknown[0]!r}; known: {', '.join(PRIORITY_CLASSES)}")
            caps.update(capacity)
        self._cap = caps
        self._max = max_items
        self._live: dict[int, _Slot] = {}
        self._class_len = dict.fromkeys(PRIORITY_CLASSES, 0)
        self._seq = 0
        self._exp: list[tuple[float, int, _Slot]] = []  # finite expiries of queued slots
        self._n_exp = 0  # live (_QUEUED) entries in _exp
        self._pending: dict[int, _Slot] = {}  # expired, awaiting expire(); in expiry order
        self._shed: dict[str, list[tuple[int, int, _Slot]]] = {c: [] for c in PRIORITY_CLASSES}
        self._n_shed = dict.fromkeys(PRIORITY_CLASSES, 0)  # live sheddable slots per class

    @classmethod
    def from_params(cls, params: Any, rng: np.random.Generator) -> QueueBase:
        return cls(params.capacity, params.max_items)

    # -- the ordering, supplied by subclasses -------------------------------------------------------------------
    def _order_push(self, slot: _Slot) -> None:
        raise NotImplementedError

    def _order_pop(self) -> _Slot | None:
        raise NotImplementedError

    def _order_discard(self, slot: _Slot) -> None:
        raise NotImplementedError

    # -- the FlowQueue interface --------------------------------------------------------------------------------
    def push(self, now: float, item: QueuedRequest) -> PushResult:
        rid = item.request_id
        if rid in self._live:
            raise ValueError(f"request {rid} is already queued")
        cls = item.priority_class
        n_cls = self._class_len.get(cls)
        if n_cls is None:
            raise ValueError(f"unknown priority class {cls!r}; known: {', '.join(PRIORITY_CLASSES)}")
        evicted: tuple[QueuedRequest, ...] = ()
        cap = self._cap[cls]
        if cap is not None and n_cls >= cap:
            victim = self._victim(cls, item.priority)
            if victim is None:
                return PushResult(False, f"capacity: band {cls} full ({cap})")
            self._kill(victim)
            evicted = (victim.item,)
        elif self._max is not None and len(self._live) >= self._max:
            victim = self._victim(None, item.priority)
            if victim is None:
                return PushResult(False, f"capacity: queue full (max_items {self._max})")
            self._kill(victim)
            evicted = (victim.item,)
        self._seq += 1
        slot = _Slot(item, self._seq)
        self._live[rid] = slot
        self._class_len[cls] += 1
        if item.expires_at < _INF:
            heappush(self._exp, (item.expires_at, slot.seq, slot))
            self._n_exp += 1
        if item.priority < 0:
            heappush(self._shed[cls], (item.priority, -slot.seq, slot))
            self._n_shed[cls] += 1
        self._order_push(slot)
        return PushResult(True, "", evicted)

    def pop(self, now: float) -> QueuedRequest | None:
        exp = self._exp
        if exp and exp[0][0] <= now:
            self._sweep(now)
        slot = self._order_pop()
        if slot is None:
            return None
        slot.state = _DEAD
        item = slot.item
        self._forget(slot, item)
        if item.expires_at < _INF:
            self._n_exp -= 1
            self._maybe_compact_exp()
        return item

    def expire(self, now: float) -> list[QueuedRequest]:
        self._sweep(now)
        if not self._pending:
            return []
        out = []
        for slot in self._pending.values():
            slot.state = _DEAD
            item = slot.item
            self._forget(slot, item)
            out.append(item)
        self._pending.clear()
        return out

    def next_expiry(self) -> float:
        if self._pending:
            return next(iter(self._pending.values())).item.expires_at
        exp = self._exp
        while exp and exp[0][2].state != _QUEUED:
            heappop(exp)
        return exp[0][0] if exp else _INF

    def remove(self, request_id: int) -> QueuedRequest | None:
        slot = self._live.get(request_id)
        if slot is None:
            return None
        self._kill(slot)
        return slot.item

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._live

    def lengths(self) -> dict[str, int]:
        return dict(self._class_len)

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        """Move every queued slot with expires_at <= now to the pending list (out of the dispatch order)."""
        exp = self._exp
        pending = self._pending
        while exp and exp[0][0] <= now:
            slot = heappop(exp)[2]
            if slot.state == _QUEUED:
                self._n_exp -= 1
                slot.state = _PENDING
                pending[slot.item.request_id] = slot
                self._order_discard(slot)

    def _forget(self, slot: _Slot, item: QueuedRequest) -> None:
        """Drop a slot (state already _DEAD) from the live set, the counts and the sheddable index."""
        del self._live[item.request_id]
        cls = item.priority_class
        self._class_len[cls] -= 1
        if item.priority < 0:
            n = self._n_shed[cls] - 1
            self._n_shed[cls] = n
            heap = self._shed[cls]
            if len(heap) > 2 * n + _COMPACT_SLACK:
                self._shed[cls] = heap = [e for e in heap if e[2].state != _DEAD]
                heapify(heap)

    def _kill(self, slot: _Slot) -> None:
        """Remove a live slot (queued or pending expiry): remove() and eviction."""
        item = slot.item
        if slot.state == _QUEUED:
            slot.state = _DEAD
            self._order_discard(slot)
            if item.expires_at < _INF:
                self._n_exp -= 1
                self._maybe_compact_exp()
        else:
            slot.state = _DEAD
            del self._pending[item.request_id]
        self._forget(slot, item)

    def _maybe_compact_exp(self) -> None:
        exp = self._exp
        if len(exp) > 2 * self._n_exp + _COMPACT_SLACK:
            self._exp = exp = [e for e in exp if e[2].state == _QUEUED]
            heapify(exp)

    def _top_victim(self, cls: str) -> tuple[int, int, _Slot] | None:
        heap = self._shed[cls]
        while heap and heap[0][2].state == _DEAD:
            heappop(heap)
        return heap[0] if heap else None

    def _victim(self, cls: str | None, priority: int) -> _Slot | None:
        """The eviction victim for an arrival of `priority`: among queued items with priority < 0 and lower than
        the arrival's (in class `cls`, or anywhere when None), the lowest priority, then the most recent."""
        if cls is not None:
            best = self._top_victim(cls)
        else:
            best = None
            for c in PRIORITY_CLASSES:
                top = self._top_victim(c)
                if top is not None and (best is None or top < best):
                    best = top
        if best is None or best[0] >= priority:
            return None
        return best[2]
