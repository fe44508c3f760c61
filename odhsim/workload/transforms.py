"""Chunk-wise workload transforms (time/rate scaling, windows, sampling, limits) and the k-way merge.

Each takes and returns an iterator of time-sorted `RequestBatch` chunks, so a 27 M-row trace is transformed
without ever being held in memory; `window` and `limit` stop reading their input as soon as they are done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from odhsim.workload.schema import RequestBatch, concat


def time_scale(batches: Iterable[RequestBatch], factor: float) -> Iterator[RequestBatch]:
    """Multiply arrival times by `factor` (< 1 compresses the trace: higher load, same requests)."""
    if factor <= 0:
        raise ValueError("time scale factor must be > 0")
    for b in batches:
        yield b.with_columns(arrival_s=b.arrival_s * factor)


def rate_scale(batches: Iterable[RequestBatch], factor: float) -> Iterator[RequestBatch]:
    """Multiply the request rate by `factor`: a time scale of 1/factor."""
    if factor <= 0:
        raise ValueError("rate scale factor must be > 0")
    return time_scale(batches, 1.0 / factor)


def shift(batches: Iterable[RequestBatch], offset_s: float) -> Iterator[RequestBatch]:
    """Add `offset_s` to every arrival (start a source later)."""
    for b in batches:
        yield b.with_columns(arrival_s=b.arrival_s + offset_s) if offset_s else b


def window(
    batches: Iterable[RequestBatch], start_s: float, end_s: float | None = None, *, rebase: bool = True
) -> Iterator[RequestBatch]:
    """Keep arrivals in [start_s, end_s); with `rebase`, subtract start_s so the window starts at 0."""
    if end_s is not None and end_s <= start_s:
        raise ValueError("window end must be after its start")
    hi = np.inf if end_s is None else end_s
    for b in batches:
        if len(b) and b.arrival_s[0] >= hi:
            return
        lo_i, hi_i = np.searchsorted(b.arrival_s, [start_s, hi], side="left")
        if hi_i > lo_i:
            part = b if (lo_i, hi_i) == (0, len(b)) else b.take(np.arange(lo_i, hi_i))
            yield part.with_columns(arrival_s=part.arrival_s - start_s) if rebase and start_s else part


def jitter(batches: Iterable[RequestBatch], spread_s: float, rng: np.random.Generator) -> Iterator[RequestBatch]:
    """Move each arrival to a uniform time in [t, t + spread_s), keeping the stream sorted.

    Why: some traces quantize their timestamps (the Mooncake trace's first half hour falls on 600 instants, 3 s
    apart), which hands the router bursts of simultaneous requests that never happened. Rows that a later chunk
    could still overtake are carried over, so the output is sorted without holding more than two chunks.
    """
    if spread_s <= 0:
        yield from batches
        return
    carry: RequestBatch | None = None
    for b in batches:
        if not len(b):
            continue
        moved = b.with_columns(arrival_s=b.arrival_s + rng.uniform(0.0, spread_s, len(b)))
        pool = moved if carry is None else concat([carry, moved])
        pool = pool.take(np.argsort(pool.arrival_s, kind="stable"))
        # later chunks start at or after this chunk's last raw arrival, and jitter only moves rows later
        cut = int(np.searchsorted(pool.arrival_s, b.arrival_s[-1], side="right"))
        if cut:
            yield pool.take(np.arange(cut))
        carry = pool.take(np.arange(cut, len(pool))) if cut < len(pool) else None
    if carry is not None:
        yield carry


def sample(batches: Iterable[RequestBatch], p: float, rng: np.random.Generator) -> Iterator[RequestBatch]:
    """Keep each request independently with probability p (thins the load, keeps its shape)."""
    if not 0 < p <= 1:
        raise ValueError("sample probability must be in (0, 1]")
    for b in batches:
        keep = rng.random(len(b)) < p
        if keep.any():
            yield b if keep.all() else b.take(keep)


def limit(batches: Iterable[RequestBatch], n: int | None) -> Iterator[RequestBatch]:
    """The first n requests (all when n is None)."""
    left = n
    for b in batches:
        if left is not None and left <= 0:
            return
        if left is not None and len(b) > left:
            b = b.take(np.arange(left))
        left = None if left is None else left - len(b)
        yield b


def rechunk(batches: Iterable[RequestBatch], chunk_rows: int) -> Iterator[RequestBatch]:
    """Chunks of exactly chunk_rows rows (the last may be shorter), whatever the input's chunking."""
    pending: list[RequestBatch] = []
    size = 0
    for b in batches:
        pending.append(b)
        size += len(b)
        if size >= chunk_rows:
            whole = concat(pending)
            cut = size - size % chunk_rows
            for i in range(0, cut, chunk_rows):
                yield whole.take(np.arange(i, i + chunk_rows))
            pending = [whole.take(np.arange(cut, size))] if cut < size else []
            size -= cut
    if size:
        yield concat(pending)


def merge(
    sources: Sequence[Iterable[RequestBatch]], chunk_rows: int = 65_536, *, source: str = "workload"
) -> Iterator[RequestBatch]:
    """Merge time-sorted chunk streams into one time-sorted stream (ties: lower source index first per round).

    Each round, every unfinished source holds a buffered chunk; rows up to the smallest "last buffered arrival"
    among them can no longer be preceded by anything unread, so they are sorted together and emitted. The
    source that set the bound then refills. Buffers are consumed by cursor, so no row is copied twice.
    """
    its: list[Iterator[RequestBatch] | None] = [iter(s) for s in sources]
    if len(its) == 1:
        yield from (replace(b, source=source) for b in rechunk(sources[0], chunk_rows))
        return
    empty = RequestBatch.from_columns(np.zeros(0), np.zeros(0), np.zeros(0))
    bufs = [empty] * len(its)
    pos = [0] * len(its)

    def rounds() -> Iterator[RequestBatch]:
        while True:
            for i, it in enumerate(its):
                while it is not None and pos[i] >= len(bufs[i]):  # refill drained buffers
                    nxt = next(it, None)
                    if nxt is None:
                        its[i] = it = None
                    else:
                        bufs[i], pos[i] = nxt, 0
            live = [i for i in range(len(its)) if pos[i] < len(bufs[i])]
            if not live:
                return
            bound = min((float(bufs[i].arrival_s[-1]) for i in live if its[i] is not None), default=np.inf)
            parts = []
            for i in live:
                cut = int(np.searchsorted(bufs[i].arrival_s, bound, side="right"))
                if cut > pos[i]:
                    parts.append(bufs[i].take(np.arange(pos[i], cut)))
                    pos[i] = cut
            whole = concat(parts)
            yield whole.take(np.argsort(whole.arrival_s, kind="stable"))

    for b in rechunk(rounds(), chunk_rows):
        yield replace(b, source=source)
