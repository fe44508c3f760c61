"""The gateway core's wake-ups (WakeAt) on the event loop: a heap by due time, each fired at its own due time.

A wake-up is armed with `loop.call_later` when a loop runs, and the housekeeping tick fires whatever is due too
(a test driving the gateway by hand has no loop: its ticks fire them). Firing pops them in the order they are due
and hands each its due time, as the simulator does, so a late tick does not stretch a sweep interval."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any


class TimerHeap:
    """Wake-ups waiting to fire: (due, kind, target) by due time, ties in the order they were scheduled."""

    def __init__(self, clock: Callable[[], float], on_due: Callable[[], None]) -> None:
        """`on_due`: called from the loop when an armed wake-up's time has come (it fires what is due)."""
        self._clock = clock
        self._on_due = on_due
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, due: float, kind: str, target: Any) -> None:
        """Keep the wake-up, and arm the loop for it when one runs."""
        heapq.heappush(self._heap, (due, next(self._seq), kind, target))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (a test driving the gateway by hand): the tick fires it
            return
        loop.call_later(max(0.0, due - self._clock()), self._on_due)

    def pop_due(self, now: float) -> Iterator[tuple[float, str, Any]]:
        """(due, kind, target) of each wake-up due by `now`, earliest first; one scheduled while iterating is
        yielded too when it is due by `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, kind, target = heapq.heappop(heap)
            yield due, kind, target

    def clear(self) -> None:
        self._heap.clear()
