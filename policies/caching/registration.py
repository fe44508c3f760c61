"""Registers the caching policies; `policies.builtin` calls `register` (never an import side effect)."""

from __future__ import annotations

from policies.caching.response_cache import TieredCacheParams, build_none, build_tiered
from policies.registry import NoParams, Registry

KIND = "response-cache"


def register(reg: Registry) -> None:
    """`response-cache/tiered` (local LRU + shared tier) and `response-cache/none` (caching off)."""
    reg.register(KIND, "tiered", build_tiered, TieredCacheParams)
    reg.register(KIND, "none", build_none, NoParams)
