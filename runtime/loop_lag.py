"""How late the gateway's event loop runs: a task that sleeps `interval_s` and measures how much longer it slept.

Everything the gateway does shares one event loop; when a burst keeps it busy (or something blocks it), every
timer fires late, including the timeouts of attempts at replicas. An attempt that timed out while the loop itself
was stalled says nothing about the replica, so the gateway asks `lag_within(seconds)` before blaming one. The
answer includes a stall still in progress (the time since the monitor last woke), because the coroutine that sees
the timeout may run before the monitor's own late wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

HISTORY_S = 120.0
"""How far back lags are kept for `lag_within` (longer than any attempt's timeout)."""


class LoopLagMonitor:
    """Measures the loop's oversleep every `interval_s`; `observe(lag_s)` sees every measurement (a histogram)."""

    def __init__(
        self,
        interval_s: float = 0.05,
        observe: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = float(interval_s)
        self.observe = observe
        self.clock = clock
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self._last_wake = clock()
        self._recent: deque[tuple[float, float]] = deque()  # (woke at, lag)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._last_wake = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(self.interval_s)
            now = self.clock()
            self.record(now, max(0.0, now - before - self.interval_s))

    def record(self, now: float, lag_s: float) -> None:
        self._last_wake = now
        self.last_lag_s = lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)
        self._recent.append((now, lag_s))
        while self._recent and self._recent[0][0] < now - HISTORY_S:
            self._recent.popleft()
        if self.observe is not None:
            self.observe(lag_s)

    def current_stall_s(self) -> float:
        """How overdue the monitor's next wake-up is now: > 0 while the loop is (or just was) blocked."""
        if self._task is None:
            return 0.0
        return max(0.0, self.clock() - self._last_wake - self.interval_s)

    def lag_within(self, seconds: float) -> float:
        """The largest lag measured in the last `seconds`, a stall still in progress included."""
        since = self.clock() - max(0.0, seconds)
        worst = self.current_stall_s()
        for woke, lag in reversed(self._recent):
            if woke < since:
                break
            worst = max(worst, lag)
        return worst
