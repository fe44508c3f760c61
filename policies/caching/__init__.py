"""Response caching for exact repeats: a stable request key, a local LRU/TTL tier, a shared tier, and the tiered
cache that combines them. Build one from configuration with `policies.caching.config.build_response_cache`."""

from policies.caching.key import response_key
from policies.caching.response_cache import CacheLookup, NullResponseCache, TieredResponseCache
from policies.caching.tiers import CachedResponse, InMemorySharedTier, LocalTier, SharedTier

__all__ = [
    "CacheLookup",
    "CachedResponse",
    "InMemorySharedTier",
    "LocalTier",
    "NullResponseCache",
    "SharedTier",
    "TieredResponseCache",
    "response_key",
]
