"""Cache tiers: a local LRU with TTL and entry/byte limits, and the minimal protocol of a shared tier.

Every method takes `now` (simulated or wall-clock seconds, never read from a clock here). An entry expires exactly
at `stored_at + ttl`: a `get` at that instant is a miss. Expired entries are dropped lazily when touched, or all at
once by `sweep(now)`. The live runtime supplies a Redis-backed `SharedTier`; `InMemorySharedTier` is the same
contract in memory for the simulator and the tests.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """What a shared tier returns on a hit: the value, its size, and when it expires (None: unknown / never)."""

    value: object
    size_bytes: int
    expires_at: float | None = None


@runtime_checkable
class SharedTier(Protocol):
    """A cache shared by gateway replicas (Redis in the runtime). Synchronous, and allowed to raise: the caller
    (`TieredResponseCache`) treats any exception as a miss and counts it."""

    def get(self, now: float, key: int) -> CachedResponse | None: ...

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None) -> None: ...


@dataclass(slots=True)
class _Entry:
    value: object
    size_bytes: int
    expires_at: float  # math.inf: never


def _check_size(size_bytes: int) -> int:
    if isinstance(size_bytes, bool) or int(size_bytes) != size_bytes or size_bytes < 0:
        raise ValueError(f"size_bytes must be a non-negative integer, got {size_bytes!r}")
    return int(size_bytes)


class LocalTier:
    """LRU cache bounded by entry count and total bytes, with a time-to-live per entry.

    Counters: hits, misses, evictions (removed for room while still fresh), expirations (removed because expired,
    whether found on access, by `sweep`, or at the LRU end when making room), rejected (an entry larger than
    `max_bytes` is never stored).
    """

    __slots__ = (
        "_bytes",
        "_entries",
        "evictions",
        "expirations",
        "hits",
        "max_bytes",
        "max_entries",
        "misses",
        "rejected",
        "ttl_s",
    )

    def __init__(self, max_entries: int = 10_000, max_bytes: int | None = 256 * 2**20, ttl_s: float | None = 300.0):
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1 (or None for no byte limit)")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError("ttl_s must be > 0 (or None for no expiry)")
        self.max_entries = int(max_entries)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.ttl_s = ttl_s
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def keys(self) -> list[int]:
        """Keys from least to most recently used (expired entries not yet swept included)."""
        return list(self._entries)

    def _remove(self, key: int) -> _Entry:
        entry = self._entries.pop(key)
        self._bytes -= entry.size_bytes
        return entry

    def get_entry(self, now: float, key: int) -> CachedResponse | None:
        """Like `get`, with the entry's size and expiry (what a shared tier needs to hand back)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.expires_at:
            self._remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        expires = None if math.isinf(entry.expires_at) else entry.expires_at
        return CachedResponse(entry.value, entry.size_bytes, expires)

    def get(self, now: float, key: int) -> object | None:
        """The cached value (refreshing its recency), or None when absent or expired."""
        hit = self.get_entry(now, key)
        return None if hit is None else hit.value

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None = None) -> bool:
        """Store (or replace) an entry that expires at now + ttl (the tier's ttl unless given); False if rejected.

        Least recently used entries are removed until both limits hold with the new entry.
        """
        size = _check_size(size_bytes)
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl_s must be > 0")
        if key in self._entries:
            self._remove(key)
        if self.max_bytes is not None and size > self.max_bytes:
            self.rejected += 1
            return False
        while self._entries and (
            len(self._entries) + 1 > self.max_entries
            or (self.max_bytes is not None and self._bytes + size > self.max_bytes)
        ):
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size_bytes
            if now >= old.expires_at:
                self.expirations += 1
            else:
                self.evictions += 1
        self._entries[key] = _Entry(value, size, math.inf if ttl is None else now + ttl)
        self._bytes += size
        return True

    def sweep(self, now: float) -> int:
        """Drop every expired entry; returns how many."""
        dead = [k for k, e in self._entries.items() if now >= e.expires_at]
        for k in dead:
            self._remove(k)
        self.expirations += len(dead)
        return len(dead)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "rejected": self.rejected,
        }


class InMemorySharedTier:
    """The shared-tier contract in memory (one process): LRU + TTL like `LocalTier`, TTL given per put."""

    __slots__ = ("_tier",)

    def __init__(self, max_entries: int = 100_000, max_bytes: int | None = None, ttl_s: float | None = 300.0):
        self._tier = LocalTier(max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl_s)

    def __len__(self) -> int:
        return len(self._tier)

    @property
    def tier(self) -> LocalTier:
        """The underlying LRU (for its counters)."""
        return self._tier

    def get(self, now: float, key: int) -> CachedResponse | None:
        return self._tier.get_entry(now, key)

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None) -> None:
        self._tier.put(now, key, value, size_bytes, ttl_s)

    def sweep(self, now: float) -> int:
        return self._tier.sweep(now)
