"""The simple flow-control orderings: one FIFO, strict priority bands, earliest deadline first.

Capacity, eviction and TTL are shared (policies.flowcontrol.queue_base); the weighted fair queues live in
policies.flowcontrol.wfq.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from heapq import heapify, heappop, heappush
from typing import Any

from policies.flowcontrol.queue_base import (
    _COMPACT_SLACK,
    _QUEUED,
    DEFAULT_BAND_CAPACITY,
    QueueBase,
    QueueParams,
    _Slot,
)

__all__ = ["DEFAULT_BAND_CAPACITY", "EdfQueue", "FcfsQueue", "QueueBase", "QueueParams", "StrictPriorityQueue"]


class FcfsQueue(QueueBase):
    """One FIFO for everything: first come, first served (llm-d's FCFS ordering without bands)."""

    TYPE = "fcfs"
    __slots__ = ("_fifo", "_garbage")

    def __init__(self, capacity: Mapping[str, int | None] | None = None, max_items: int | None = None) -> None:
        super().__init__(capacity, max_items)
        self._fifo: deque[_Slot] = deque()
        self._garbage = 0

    def _order_push(self, slot: _Slot) -> None:
        self._fifo.append(slot)

    def _order_pop(self) -> _Slot | None:
        fifo = self._fifo
        while fifo:
            slot = fifo.popleft()
            if slot.state == _QUEUED:
                return slot
            self._garbage -= 1
        return None

    def _order_discard(self, slot: _Slot) -> None:
        self._garbage += 1
        if self._garbage > _COMPACT_SLACK and 2 * self._garbage > len(self._fifo):
            self._fifo = deque(s for s in self._fifo if s.state == _QUEUED)
            self._garbage = 0


class _HeapOrderQueue(QueueBase):
    """Dispatch in increasing `_key(item)`, ties by enqueue order."""

    __slots__ = ("_garbage", "_heap")

    def __init__(self, capacity: Mapping[str, int | None] | None = None, max_items: int | None = None) -> None:
        super().__init__(capacity, max_items)
        self._heap: list[tuple[Any, ...]] = []  # (key..., seq, slot): the slot is last
        self._garbage = 0

    def _order_pop(self) -> _Slot | None:
        heap = self._heap
        while heap:
            slot: _Slot = heappop(heap)[-1]
            if slot.state == _QUEUED:
                return slot
            self._garbage -= 1
        return None

    def _order_discard(self, slot: _Slot) -> None:
        self._garbage += 1
        if self._garbage > _COMPACT_SLACK and 2 * self._garbage > len(self._heap):
            self._heap = heap = [e for e in self._heap if e[-1].state == _QUEUED]
            heapify(heap)
            self._garbage = 0


class StrictPriorityQueue(_HeapOrderQueue):
    """Bands from high to low integer priority, FCFS inside a band (llm-d's global-strict fairness + FCFS)."""

    TYPE = "strict-priority"
    __slots__ = ()

    def _order_push(self, slot: _Slot) -> None:
        heappush(self._heap, (-slot.item.priority, slot.seq, slot))


class EdfQueue(_HeapOrderQueue):
    """Strict priority bands, earliest deadline first inside a band, ties FCFS.

    llm-d's EDF (and SLO-deadline) ordering policy orders the items of one flow queue; the dispatch cycle walks the
    priority bands from highest to lowest, so a later deadline in a higher band still goes first.
    """

    TYPE = "edf"
    __slots__ = ()

    def _order_push(self, slot: _Slot) -> None:
        heappush(self._heap, (-slot.item.priority, slot.item.deadline, slot.seq, slot))
