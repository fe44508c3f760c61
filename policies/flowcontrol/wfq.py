"""Weighted fair queuing between priority classes (`wfq-class`) or tenants (`wfq-tenant`).

Start-time fair queuing (Goyal, Vin and Cheng, SIGCOMM 1996) applied per flow, with the flow's next item chosen at
dispatch time (so a flow may reorder its own items: strict priority, then FCFS):

- each flow f has a weight w_f and a start tag S_f; the system has a virtual time v;
- pop: among backlogged flows take the one with the smallest S_f (ties: the flow registered first, i.e. the more
  important class); set v = S_f; dispatch the flow's next item and advance S_f += size / w_f;
- a flow that becomes backlogged gets S_f = max(S_f, v): it competes from the present and cannot spend credit
  saved while idle (no burst), while a flow that was served ahead keeps its lead; when the whole queue is idle v
  first jumps to the largest tag handed out (SFQ's idle rule), so everyone restarts level.

Work-conserving: only backlogged flows compete, so an empty flow's share goes to the others in proportion to
their weights. Fairness bound (SFQ): over any interval in which flows f and g are both backlogged,
|W_f / w_f - W_g / w_g| <= size_max_f / w_f + size_max_g / w_g, with W the dispatched size. A returning flow
therefore gets at most one item more than its weighted share. llm-d's VTC fairness policy uses the same "lift a
rejoining flow to the current minimum" rule; its round-robin fairness is this with equal weights and size 1.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from heapq import heapify, heappop, heappush, heapreplace
from typing import Annotated

import numpy as np
from pydantic import Field, field_validator

from policies.flowcontrol.priority import DEFAULT_SHARES, PRIORITY_CLASSES
from policies.flowcontrol.queue_base import _COMPACT_SLACK, _QUEUED, QueueBase, QueueParams, _Slot

PositiveWeight = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class _Flow:
    __slots__ = ("epoch", "heap", "index", "n", "start", "weight")

    def __init__(self, index: int, weight: float, start: float) -> None:
        self.index = index  # tie-break between flows with equal tags
        self.weight = weight
        self.start = start  # S_f: start tag of the flow's next item
        self.n = 0  # queued (dispatchable) items
        self.heap: list[tuple[int, int, _Slot]] = []  # (-priority, seq, slot): strict priority, then FCFS
        self.epoch = 0  # invalidates the flow's older entries in the scheduler heap


class WfqScheduler:
    """The SFQ core over flows keyed by any hashable; holds slots, not capacity (QueueBase does that)."""

    __slots__ = ("_flows", "_heap", "_vmax", "backlogged", "v")

    def __init__(self) -> None:
        self._flows: dict[Hashable, _Flow] = {}
        self._heap: list[tuple[float, int, int, _Flow]] = []  # (S_f, index, epoch, flow)
        self.v = 0.0
        self._vmax = 0.0
        self.backlogged = 0

    def flow(self, key: Hashable, weight: float) -> _Flow:
        f = self._flows.get(key)
        if f is None:
            f = self._flows[key] = _Flow(len(self._flows), weight, 0.0)
        return f

    def push(self, flow: _Flow, slot: _Slot) -> None:
        if flow.n == 0:
            if self.backlogged == 0 and self._vmax > self.v:
                self.v = self._vmax
            if flow.start < self.v:
                flow.start = self.v
            flow.epoch += 1
            heappush(self._heap, (flow.start, flow.index, flow.epoch, flow))
            self.backlogged += 1
        flow.n += 1
        heappush(flow.heap, (-slot.item.priority, slot.seq, slot))

    def pop(self) -> _Slot | None:
        heap = self._heap
        while heap:
            start, _, epoch, flow = heap[0]
            if epoch != flow.epoch or flow.n == 0:
                heappop(heap)
                continue
            fheap = flow.heap
            slot = heappop(fheap)[2]
            while slot.state != _QUEUED:
                slot = heappop(fheap)[2]
            self.v = start
            flow.start = tag = start + slot.item.size / flow.weight
            if tag > self._vmax:
                self._vmax = tag
            flow.n -= 1
            if flow.n:
                heapreplace(heap, (tag, flow.index, flow.epoch, flow))
            else:
                heappop(heap)
                self.backlogged -= 1
            return slot
        return None

    def discard(self, flow: _Flow) -> None:
        """One of the flow's queued slots left other than by pop (its state is already set)."""
        flow.n -= 1
        if flow.n == 0:
            self.backlogged -= 1
        if len(flow.heap) > 2 * flow.n + _COMPACT_SLACK:
            flow.heap = [e for e in flow.heap if e[2].state == _QUEUED]
            heapify(flow.heap)


class WfqClassParams(QueueParams):
    shares: dict[str, PositiveWeight] = Field(default_factory=lambda: dict(DEFAULT_SHARES))

    @field_validator("shares")
    @classmethod
    def _every_class(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(PRIORITY_CLASSES))
        if unknown:
            raise ValueError(f"unknown priority class {unknown[0]!r}; known: {', '.join(PRIORITY_CLASSES)}")
        missing = [c for c in PRIORITY_CLASSES if c not in v]
        if missing:
            raise ValueError(f"shares must give every class a weight; missing: {', '.join(missing)}")
        return {c: v[c] for c in PRIORITY_CLASSES}


class WfqClassQueue(QueueBase):
    """Weighted fair sharing between priority classes by `shares` (default 80/15/4/1), weighted by item size."""

    TYPE = "wfq-class"
    Params = WfqClassParams
    __slots__ = ("_flows", "_sched")

    def __init__(
        self,
        shares: Mapping[str, float] | None = None,
        capacity: Mapping[str, int | None] | None = None,
        max_items: int | None = None,
    ) -> None:
        super().__init__(capacity, max_items)
        weights = dict(WfqClassParams(shares=dict(shares or DEFAULT_SHARES)).shares)
        self._sched = WfqScheduler()
        # Registered in class order, so equal tags favour the more important class.
        self._flows = {c: self._sched.flow(c, weights[c]) for c in PRIORITY_CLASSES}

    @classmethod
    def from_params(cls, params: WfqClassParams, rng: np.random.Generator) -> WfqClassQueue:
        return cls(params.shares, params.capacity, params.max_items)

    def _order_push(self, slot: _Slot) -> None:
        self._sched.push(self._flows[slot.item.priority_class], slot)

    def _order_pop(self) -> _Slot | None:
        return self._sched.pop()

    def _order_discard(self, slot: _Slot) -> None:
        self._sched.discard(self._flows[slot.item.priority_class])


class WfqTenantParams(QueueParams):
    weights: dict[str, PositiveWeight] = Field(default_factory=dict)
    default_weight: PositiveWeight = 1.0
    within_bands: bool = False


class WfqTenantQueue(QueueBase):
    """Weighted fair sharing between tenants (unknown tenants get `default_weight`); inside a tenant strict
    priority, then FCFS.

    within_bands=True is llm-d's layout instead: bands from high to low integer priority are served strictly, and
    the tenants inside a band share it fairly (llm-d's round-robin fairness when all weights are equal).
    """

    TYPE = "wfq-tenant"
    Params = WfqTenantParams
    __slots__ = ("_band_heap", "_bands", "_default", "_in_heap", "_sched", "_weights", "_within_bands")

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
        within_bands: bool = False,
        capacity: Mapping[str, int | None] | None = None,
        max_items: int | None = None,
    ) -> None:
        super().__init__(capacity, max_items)
        checked = WfqTenantParams(weights=dict(weights or {}), default_weight=default_weight)
        self._weights = dict(checked.weights)
        self._default = checked.default_weight
        self._within_bands = within_bands
        self._sched = WfqScheduler()
        self._bands: dict[int, WfqScheduler] = {}
        self._band_heap: list[int] = []  # -priority of bands that may be backlogged
        self._in_heap: set[int] = set()

    @classmethod
    def from_params(cls, params: WfqTenantParams, rng: np.random.Generator) -> WfqTenantQueue:
        return cls(params.weights, params.default_weight, params.within_bands, params.capacity, params.max_items)

    def _scheduler(self, priority: int) -> WfqScheduler:
        if not self._within_bands:
            return self._sched
        sched = self._bands.get(priority)
        if sched is None:
            sched = self._bands[priority] = WfqScheduler()
        return sched

    def _order_push(self, slot: _Slot) -> None:
        item = slot.item
        sched = self._scheduler(item.priority)
        tenant = item.tenant
        sched.push(sched.flow(tenant, self._weights.get(tenant, self._default)), slot)
        if self._within_bands and item.priority not in self._in_heap:
            self._in_heap.add(item.priority)
            heappush(self._band_heap, -item.priority)

    def _order_pop(self) -> _Slot | None:
        if not self._within_bands:
            return self._sched.pop()
        heap = self._band_heap
        while heap:
            priority = -heap[0]
            sched = self._bands[priority]
            if sched.backlogged:
                return sched.pop()
            heappop(heap)
            self._in_heap.discard(priority)
        return None

    def _order_discard(self, slot: _Slot) -> None:
        item = slot.item
        sched = self._scheduler(item.priority)
        sched.discard(sched.flow(item.tenant, self._default))
