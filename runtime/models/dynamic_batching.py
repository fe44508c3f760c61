"""Dynamic batching (KServe / Triton style) for the `fixed` models.

Requests carry a few rows each. The first request to arrive opens a batch; the batch closes when it holds
`max_batch_size` rows or `max_batch_delay_ms` after that first arrival, runs as one forward pass on a dedicated
worker thread, and each request gets its own rows back. A request bigger than `max_batch_size` runs alone.

Every batch that ran appends one tuple to `step_rows`, a bounded ring in steps.parquet's field order
(odhsim.results.steps: start time, duration from the batch closing until its results are handed out, requests,
zeros for the LLM fields, input rows) that the replica spools to a file (runtime.replica.steps_spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

STEP_RING = 65536
"""Batches kept in memory until the replica's spooler drains them (oldest dropped beyond)."""


@dataclass(frozen=True)
class BatcherStats:
    waiting: int
    running: int
    requests_total: int
    batches_total: int
    rows_total: int


@dataclass(eq=False)
class _Pending:
    rows: Tensor
    future: asyncio.Future


class DynamicBatcher:
    """Gathers `submit`ted row blocks into batches for `fn` (a [rows, ...] -> tuple of [rows, ...] tensors function).

    `fn` runs on one worker thread; its outputs are split back by each request's row count."""

    def __init__(
        self,
        fn: Callable[[Tensor], tuple[Tensor, ...]],
        *,
        max_batch_size: int = 16,
        max_batch_delay_ms: float = 5.0,
        threads: int | None = None,
    ) -> None:
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_batch_delay_ms / 1000.0
        self._threads = threads
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._running = 0
        self._requests = self._batches = self._rows = 0
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self.step_rows: deque[tuple] = deque(maxlen=STEP_RING)

    async def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="batcher", initializer=self._init_thread)
            self._task = asyncio.create_task(self._loop(), name="dynamic-batching")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(RuntimeError("the batcher closed"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _init_thread(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)

    async def run_direct(self, rows: Tensor) -> tuple[Tensor, ...]:
        """One forward pass on the worker thread, outside any batch (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._fn, rows)

    async def submit(self, rows: Tensor) -> tuple[Tensor, ...]:
        """This request's outputs (each [rows, ...]) once the batch holding it has run."""
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        pending = _Pending(rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    def stats(self) -> BatcherStats:
        waiting = sum(1 for p in self._queue if not p.future.done())
        return BatcherStats(waiting, self._running, self._requests, self._batches, self._rows)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = time.monotonic() + self.max_delay_s
            while self._rows_queued() < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = self._take()
            if not batch:
                continue
            self._running = len(batch)
            started = time.monotonic()
            try:
                rows = torch.cat([p.rows for p in batch]) if len(batch) > 1 else batch[0].rows
                outs = await loop.run_in_executor(self._executor, self._fn, rows)
            except Exception as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            finally:
                self._running = 0
            self._batches += 1
            self._rows += rows.shape[0]
            start = 0
            for p in batch:
                n = p.rows.shape[0]
                if not p.future.done():
                    p.future.set_result(tuple(o[start : start + n] for o in outs))
                    self._requests += 1
                start += n
            n_rows = rows.shape[0]
            self.step_rows.append((started, time.monotonic() - started, len(batch), 0, 0, 0, 0, 0, 0, 0, 0, n_rows))

    def _rows_queued(self) -> int:
        return sum(p.rows.shape[0] for p in self._queue if not p.future.done())

    def _take(self) -> list[_Pending]:
        """Whole requests, oldest first, up to max_batch_size rows (at least one request); cancelled ones dropped."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            p = self._queue[0]
            if p.future.done():
                self._queue.popleft()
                continue
            n = p.rows.shape[0]
            if batch and rows + n > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            rows += n
        return batch
