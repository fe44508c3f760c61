"""A two-tier response cache for exact repeats: a per-gateway LRU in front of a shared tier (Redis in the runtime).

`lookup` tries the local tier, then the shared tier; a shared hit is copied into the local tier (promotion). What a
lookup costs is returned, not slept: the caller adds `latency_s` to the request (the simulator) or ignores it (the
runtime, where the real lookup took real time). A miss costs the local lookup, plus the shared one when there is a
shared tier. The shared tier may fail (Redis down): any exception it raises is a miss, counted in `shared_errors`,
and the local tier keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from policies.caching.tiers import CachedResponse, InMemorySharedTier, LocalTier, SharedTier
from policies.registry import NoParams, PolicyParams

Tier = Literal["local", "shared"]


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The outcome of one lookup: hit or not, which tier served it, and the lookup's latency in seconds."""

    hit: bool
    tier: Tier | None
    latency_s: float
    value: object = None


class TieredResponseCache:
    """Local LRU first, then the shared tier; stores write both tiers."""

    __slots__ = (
        "_hits_local",
        "_hits_shared",
        "_misses",
        "_shared_errors",
        "_stores",
        "local",
        "local_latency_s",
        "share_across_tenants",
        "shared",
        "shared_latency_s",
        "shared_ttl_s",
    )

    def __init__(
        self,
        local: LocalTier,
        shared: SharedTier | None,
        local_latency_s: float = 0.005,
        shared_latency_s: float = 0.010,
        shared_ttl_s: float | None = None,
    ) -> None:
        if local_latency_s < 0 or shared_latency_s < 0:
            raise ValueError("cache latencies must be >= 0")
        self.local = local
        self.shared = shared
        self.local_latency_s = float(local_latency_s)
        self.shared_latency_s = float(shared_latency_s)
        self.shared_ttl_s = local.ttl_s if shared_ttl_s is None else shared_ttl_s
        self._hits_local = 0
        self._hits_shared = 0
        self._misses = 0
        self._shared_errors = 0
        self._stores = 0
        self.share_across_tenants = False

    def key_tenant(self, tenant: str) -> str | None:
        """The tenant a response key is scoped to: the tenant itself, or None when the cache is configured to share
        answers across tenants (`response_cache.share_across_tenants`)."""
        return None if self.share_across_tenants else tenant

    def lookup(self, now: float, key: int) -> CacheLookup:
        hit = self.local.get_entry(now, key)
        if hit is not None:
            self._hits_local += 1
            return CacheLookup(True, "local", self.local_latency_s, hit.value)
        if self.shared is None:
            self._misses += 1
            return CacheLookup(False, None, self.local_latency_s)
        latency = self.local_latency_s + self.shared_latency_s
        try:
            found = self.shared.get(now, key)
        except Exception:  # a shared tier failure is a miss, never an error for the request
            self._shared_errors += 1
            found = None
        if found is None:
            self._misses += 1
            return CacheLookup(False, None, latency)
        self._hits_shared += 1
        self._promote(now, key, found)
        return CacheLookup(True, "shared", latency, found.value)

    def _promote(self, now: float, key: int, found: CachedResponse) -> None:
        ttl = self.local.ttl_s
        if found.expires_at is not None:  # never keep a promoted copy beyond the shared entry's own expiry
            remaining = found.expires_at - now
            if remaining <= 0:
                return
            ttl = remaining if ttl is None else min(ttl, remaining)
        self.local.put(now, key, found.value, found.size_bytes, ttl)

    def store(self, now: float, key: int, value: object, size_bytes: int) -> None:
        """Write the response to both tiers (a shared-tier failure is counted and otherwise ignored)."""
        self._stores += 1
        self.local.put(now, key, value, size_bytes)
        if self.shared is not None:
            try:
                self.shared.put(now, key, value, size_bytes, self.shared_ttl_s)
            except Exception:
                self._shared_errors += 1

    def sweep(self, now: float) -> int:
        """Drop expired entries of the local tier (the shared tier expires on its own)."""
        return self.local.sweep(now)

    def stats(self) -> dict[str, float | int]:
        hits = self._hits_local + self._hits_shared
        lookups = hits + self._misses
        return {
            "lookups": lookups,
            "hits_local": self._hits_local,
            "hits_shared": self._hits_shared,
            "misses": self._misses,
            "stores": self._stores,
            "evictions": self.local.evictions,
            "expirations": self.local.expirations,
            "shared_errors": self._shared_errors,
            "hit_rate": hits / lookups if lookups else 0.0,
        }


class NullResponseCache:
    """Caching switched off: every lookup misses at no cost, stores are dropped."""

    __slots__ = ("_misses", "share_across_tenants")

    def __init__(self) -> None:
        self._misses = 0
        self.share_across_tenants = False

    def key_tenant(self, tenant: str) -> str | None:
        return None if self.share_across_tenants else tenant

    def lookup(self, now: float, key: int) -> CacheLookup:
        self._misses += 1
        return CacheLookup(False, None, 0.0)

    def store(self, now: float, key: int, value: object, size_bytes: int) -> None:
        return None

    def sweep(self, now: float) -> int:
        return 0

    def stats(self) -> dict[str, float | int]:
        return {
            "lookups": self._misses,
            "hits_local": 0,
            "hits_shared": 0,
            "misses": self._misses,
            "stores": 0,
            "evictions": 0,
            "expirations": 0,
            "shared_errors": 0,
            "hit_rate": 0.0,
        }


class TieredCacheParams(PolicyParams):
    """`response-cache` / `tiered`. `shared: true` builds an in-memory shared tier; the runtime swaps in Redis."""

    enabled: bool = True
    local_max_entries: Annotated[int, Field(ge=1)] = 10_000
    local_max_bytes: Annotated[int, Field(ge=1)] = 256 * 2**20
    ttl_s: Annotated[float, Field(gt=0.0)] = 300.0
    local_latency_s: Annotated[float, Field(ge=0.0)] = 0.005
    shared: bool = True
    shared_latency_s: Annotated[float, Field(ge=0.0)] = 0.010
    shared_max_entries: Annotated[int, Field(ge=1)] = 100_000
    shared_max_bytes: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _check(self) -> TieredCacheParams:
        if self.shared and self.shared_max_entries < self.local_max_entries:
            raise ValueError("shared_max_entries must be >= local_max_entries (the shared tier backs every gateway)")
        return self


def build_tiered(params: TieredCacheParams, rng: np.random.Generator) -> TieredResponseCache | NullResponseCache:
    """Registry factory of `response-cache/tiered` (the cache draws no random numbers)."""
    if not params.enabled:
        return NullResponseCache()
    local = LocalTier(params.local_max_entries, params.local_max_bytes, params.ttl_s)
    shared = (
        InMemorySharedTier(params.shared_max_entries, params.shared_max_bytes, params.ttl_s) if params.shared else None
    )
    return TieredResponseCache(local, shared, params.local_latency_s, params.shared_latency_s, params.ttl_s)


def build_none(params: NoParams, rng: np.random.Generator) -> NullResponseCache:
    """Registry factory of `response-cache/none`."""
    return NullResponseCache()
