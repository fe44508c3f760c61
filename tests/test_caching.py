"""Response cache: stable keys, LRU/TTL/byte limits, tier promotion, latency, shared-tier failures, config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policies.caching import (
    CachedResponse,
    InMemorySharedTier,
    LocalTier,
    NullResponseCache,
    SharedTier,
    TieredResponseCache,
    response_key,
)
from policies.caching.config import ResponseCacheConfig, build_response_cache
from policies.caching.registration import register
from policies.errors import PolicyConfigError
from policies.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128, "stop": ["\n\n"]}
BASE = {"model": "llama3-8b", "version": "v1", "sampling": SAMPLING, "prompt": "hello world"}


# -- keys ----------------------------------------------------------------------------------------------------
KEY_SCRIPT = (
    "from policies.caching.key import response_key\n"
    "print(response_key('llama3-8b', 'v1', {'temperature': 0.0, 'top_p': 1.0, 'max_tokens': 128, "
    "'stop': ['\\n\\n']}, prompt='hello world', block_ids=[1, 2, -3], prompt_tokens=42))\n"
)


def test_key_is_stable_across_processes_with_different_hash_seeds() -> None:
    here = response_key(**BASE, block_ids=[1, 2, -3], prompt_tokens=42)
    outs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT], capture_output=True, text=True, check=True, cwd=ROOT, env=env
        )
        outs.add(int(done.stdout.strip()))
    assert outs == {here}
    assert 0 <= here < 2**64


def test_key_pinned_value() -> None:
    # A change of encoding silently invalidates every shared-cache entry: make it a deliberate, visible change.
    assert response_key("m", "1", {}, prompt="p") == 0xC744DA63EB3AEE6A
    assert response_key("m", "1", (), prompt="p") == 0xC744DA63EB3AEE6A


def test_key_is_scoped_per_tenant_unless_shared() -> None:
    shared = response_key(**BASE)
    a, b = response_key(**BASE, tenant="team-a"), response_key(**BASE, tenant="team-b")
    assert len({shared, a, b}) == 3  # each tenant its own key, and neither is the shared key
    assert response_key(**BASE, tenant="team-a") == a
    assert response_key(**BASE, tenant="") not in {shared, a}  # an empty tenant name is still a tenant
    scoped = build_response_cache({"type": "tiered"}, np.random.default_rng(0))
    assert scoped.share_across_tenants is False and scoped.key_tenant("team-a") == "team-a"
    explicit = build_response_cache({"type": "tiered", "share_across_tenants": True}, np.random.default_rng(0))
    assert explicit.share_across_tenants is True and explicit.key_tenant("team-a") is None
    with pytest.raises(ValueError, match="share_across_tenants"):
        ResponseCacheConfig.model_validate({"type": "tiered", "share_across_tenants": "sometimes"})


@pytest.mark.parametrize(
    "change",
    [
        {"model": "llama3-70b"},
        {"version": "v2"},
        {"sampling": {**SAMPLING, "temperature": 0.7}},
        {"sampling": {**SAMPLING, "seed": 1}},
        {"sampling": {**SAMPLING, "stop": ["\n"]}},
        {"prompt": "hello world!"},
        {"prompt_tokens": 2},
        {"block_ids": [1, 2]},
        {"prompt": None, "block_ids": [1, 2]},
    ],
)
def test_key_changes_with_any_field(change: dict) -> None:
    assert response_key(**{**BASE, **change}) != response_key(**BASE)


def test_key_ignores_mapping_order_and_int_float_spelling() -> None:
    reordered = dict(reversed(list(SAMPLING.items())))
    assert list(reordered) != list(SAMPLING)
    assert response_key(**{**BASE, "sampling": reordered}) == response_key(**BASE)
    pairs = tuple(SAMPLING.items())
    assert response_key(**{**BASE, "sampling": pairs[::-1]}) == response_key(**BASE)
    assert response_key("m", "v", {"temperature": 1}, prompt="x") == response_key(
        "m", "v", {"temperature": 1.0}, prompt="x"
    )
    assert response_key("m", "v", {"greedy": True}, prompt="x") != response_key("m", "v", {"greedy": 1}, prompt="x")


def test_key_block_ids_list_and_array_agree_and_order_matters() -> None:
    ids = [5, 9, 2**62, -7]
    assert response_key("m", "v", {}, block_ids=ids) == response_key("m", "v", {}, block_ids=np.array(ids, np.int64))
    big = [2**63 + 5, 1]
    assert response_key("m", "v", {}, block_ids=big) == response_key("m", "v", {}, block_ids=np.array(big, np.uint64))
    assert response_key("m", "v", {}, block_ids=[1, 2]) != response_key("m", "v", {}, block_ids=[2, 1])
    assert response_key("m", "v", {}, block_ids=[]) != response_key("m", "v", {}, prompt="")


def test_key_rejects_missing_prompt_and_unhashable_values() -> None:
    with pytest.raises(ValueError, match="prompt"):
        response_key("m", "v", {"t": 0})
    with pytest.raises(TypeError):
        response_key("m", "v", {"t": object()}, prompt="x")
    with pytest.raises(TypeError):
        response_key("m", "v", {}, block_ids=[0.5, 1.5])


# -- local tier ----------------------------------------------------------------------------------------------
def test_lru_evicts_least_recently_used_first() -> None:
    t = LocalTier(max_entries=3, max_bytes=None, ttl_s=None)
    for k in (1, 2, 3):
        t.put(0.0, k, f"v{k}", 10)
    assert t.get(1.0, 1) == "v1"  # 1 becomes most recent: order 2, 3, 1
    t.put(2.0, 4, "v4", 10)  # evicts 2
    assert t.keys() == [3, 1, 4]
    assert t.get(3.0, 2) is None
    t.put(4.0, 5, "v5", 10)  # evicts 3
    assert t.keys() == [1, 4, 5]
    assert (t.hits, t.misses, t.evictions, t.expirations) == (1, 1, 2, 0)


def test_ttl_expires_exactly_at_ttl() -> None:
    t = LocalTier(max_entries=10, max_bytes=None, ttl_s=300.0)
    t.put(100.0, 7, "x", 1)
    assert t.get(399.999, 7) == "x"
    assert t.get(400.0, 7) is None
    assert (t.hits, t.misses, t.expirations, len(t)) == (1, 1, 1, 0)


def test_sweep_drops_only_expired_entries() -> None:
    t = LocalTier(max_entries=10, max_bytes=None, ttl_s=10.0)
    t.put(0.0, 1, "a", 1)
    t.put(5.0, 2, "b", 1)
    t.put(9.0, 3, "c", 1, ttl_s=100.0)
    assert t.sweep(12.0) == 1
    assert t.keys() == [2, 3]
    assert t.sweep(15.0) == 1
    assert t.keys() == [3]
    assert t.expirations == 2 and t.bytes_used == 1


def test_byte_limit_evicts_until_the_new_entry_fits() -> None:
    t = LocalTier(max_entries=100, max_bytes=100, ttl_s=None)
    t.put(0.0, 1, "a", 40)
    t.put(0.0, 2, "b", 40)
    t.put(0.0, 3, "c", 15)
    assert t.bytes_used == 95
    t.put(1.0, 4, "d", 50)  # needs 45 more bytes: evicts 1 (40) then 2 (40)
    assert t.keys() == [3, 4]
    assert t.bytes_used == 65 and t.evictions == 2
    assert t.put(2.0, 5, "huge", 101) is False
    assert t.rejected == 1 and t.keys() == [3, 4]


def test_replacing_a_key_updates_bytes_and_recency() -> None:
    t = LocalTier(max_entries=2, max_bytes=None, ttl_s=None)
    t.put(0.0, 1, "a", 10)
    t.put(0.0, 2, "b", 10)
    t.put(1.0, 1, "a2", 30)
    assert t.keys() == [2, 1] and t.bytes_used == 40 and t.get(2.0, 1) == "a2"


def test_expired_entry_at_the_lru_end_counts_as_an_expiration() -> None:
    t = LocalTier(max_entries=1, max_bytes=None, ttl_s=5.0)
    t.put(0.0, 1, "a", 1)
    t.put(6.0, 2, "b", 1)
    assert (t.evictions, t.expirations) == (0, 1)
    t.put(7.0, 3, "c", 1)
    assert (t.evictions, t.expirations) == (1, 1)


def test_local_tier_validates() -> None:
    with pytest.raises(ValueError):
        LocalTier(max_entries=0)
    with pytest.raises(ValueError):
        LocalTier(ttl_s=0.0)
    with pytest.raises(ValueError):
        LocalTier().put(0.0, 1, "x", -1)


# -- tiered cache ----------------------------------------------------------------------------------------------
def _cache(shared: SharedTier | None = None, **kw) -> TieredResponseCache:
    local = LocalTier(max_entries=kw.pop("local_max_entries", 100), max_bytes=None, ttl_s=kw.pop("ttl_s", 300.0))
    return TieredResponseCache(local, shared, **kw)


def test_latency_accounting_per_outcome() -> None:
    shared = InMemorySharedTier()
    c = _cache(shared, local_latency_s=0.005, shared_latency_s=0.010)
    miss = c.lookup(0.0, 1)
    assert (miss.hit, miss.tier, miss.latency_s) == (False, None, pytest.approx(0.015))
    c.store(0.0, 1, "resp", 100)
    local = c.lookup(1.0, 1)
    assert (local.hit, local.tier, local.latency_s, local.value) == (True, "local", 0.005, "resp")
    no_shared = _cache(None, local_latency_s=0.005, shared_latency_s=0.010)
    assert no_shared.lookup(0.0, 1).latency_s == 0.005


def test_shared_hit_is_promoted_into_the_local_tier() -> None:
    shared = InMemorySharedTier()
    gw1, gw2 = _cache(shared), _cache(shared)
    gw1.store(10.0, 42, "answer", 64)
    first = gw2.lookup(11.0, 42)
    assert (first.hit, first.tier, first.value) == (True, "shared", "answer")
    assert first.latency_s == pytest.approx(0.015)
    second = gw2.lookup(12.0, 42)
    assert (second.tier, second.latency_s) == ("local", 0.005)
    assert gw2.stats()["hits_shared"] == 1 and gw2.stats()["hits_local"] == 1


def test_promoted_copy_never_outlives_the_shared_entry() -> None:
    shared = InMemorySharedTier(ttl_s=300.0)
    gw1, gw2 = _cache(shared, ttl_s=300.0), _cache(shared, ttl_s=300.0)
    gw1.store(0.0, 5, "r", 1)
    assert gw2.lookup(250.0, 5).tier == "shared"
    assert gw2.lookup(299.0, 5).tier == "local"
    assert gw2.lookup(300.0, 5).hit is False  # the local copy expired with the shared entry, not at 550


class _BrokenShared:
    def __init__(self) -> None:
        self.calls = 0

    def get(self, now: float, key: int) -> CachedResponse | None:
        self.calls += 1
        raise ConnectionError("redis down")

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None) -> None:
        self.calls += 1
        raise ConnectionError("redis down")


def test_shared_tier_failure_is_a_miss_and_local_still_serves() -> None:
    broken = _BrokenShared()
    assert isinstance(broken, SharedTier)
    c = _cache(broken)
    assert c.lookup(0.0, 1).hit is False  # get raises: miss, error counted
    c.store(0.0, 1, "r", 10)  # put raises: counted, local still written
    hit = c.lookup(1.0, 1)
    assert (hit.hit, hit.tier, hit.value) == (True, "local", "r")
    assert c.lookup(2.0, 2).hit is False
    s = c.stats()
    assert (s["shared_errors"], s["misses"], s["hits_local"], broken.calls) == (3, 2, 1, 3)


def test_stats_counts_and_hit_rate() -> None:
    shared = InMemorySharedTier()
    c = _cache(shared, local_max_entries=2, ttl_s=10.0)
    c.store(0.0, 1, "a", 1)
    c.store(0.0, 2, "b", 1)
    c.store(0.0, 3, "c", 1)  # local evicts 1; the shared tier keeps it
    assert c.lookup(1.0, 3).tier == "local"
    assert c.lookup(1.0, 1).tier == "shared"  # promoted: local evicts 2
    assert c.lookup(1.0, 9).hit is False
    assert c.lookup(20.0, 3).hit is False  # expired in both tiers
    assert c.stats() == {
        "lookups": 4,
        "hits_local": 1,
        "hits_shared": 1,
        "misses": 2,
        "stores": 3,
        "evictions": 2,
        "expirations": 1,
        "shared_errors": 0,
        "hit_rate": 0.5,
    }


# -- registry and config ---------------------------------------------------------------------------------------
def test_registry_builds_tiered_with_reference_defaults() -> None:
    reg = Registry()
    register(reg)
    cache = reg.build("response-cache", "tiered", {}, np.random.default_rng(0))
    assert isinstance(cache, TieredResponseCache)
    assert (cache.local.max_entries, cache.local.max_bytes, cache.local.ttl_s) == (10_000, 256 * 2**20, 300.0)
    assert (cache.local_latency_s, cache.shared_latency_s) == (0.005, 0.010)
    assert isinstance(cache.shared, InMemorySharedTier) and cache.shared.tier.max_entries == 100_000
    local_only = reg.build("response-cache", "tiered", {"shared": False}, np.random.default_rng(0))
    assert isinstance(local_only, TieredResponseCache) and local_only.shared is None
    off = reg.build("response-cache", "tiered", {"enabled": False}, np.random.default_rng(0))
    assert isinstance(off, NullResponseCache)
    assert off.lookup(0.0, 1).latency_s == 0.0


def test_registry_rejects_bad_params_naming_the_field() -> None:
    reg = Registry()
    register(reg)
    with pytest.raises(PolicyConfigError, match="ttl_s"):
        reg.validate("response-cache", "tiered", {"ttl_s": 0})
    with pytest.raises(PolicyConfigError, match="bogus"):
        reg.validate("response-cache", "tiered", {"bogus": 1})
    with pytest.raises(PolicyConfigError, match="duplicate"):
        register(reg)


def test_config_section_validates_and_builds() -> None:
    cfg = ResponseCacheConfig.model_validate({"type": "tiered", "params": {"ttl_s": 60, "shared": False}})
    cache = build_response_cache(cfg, np.random.default_rng(0))
    assert isinstance(cache, TieredResponseCache) and cache.local.ttl_s == 60.0 and cache.shared is None
    assert isinstance(build_response_cache(None, np.random.default_rng(0)), NullResponseCache)
    assert isinstance(build_response_cache({"type": "none"}, np.random.default_rng(0)), NullResponseCache)
    with pytest.raises(ValueError, match="local_max_entries"):
        ResponseCacheConfig.model_validate({"params": {"local_max_entries": 0}})
    with pytest.raises(ValueError, match="unknown response-cache"):
        ResponseCacheConfig.model_validate({"type": "lru"})
    with pytest.raises(ValueError):
        ResponseCacheConfig.model_validate({"type": "tiered", "extra": 1})
