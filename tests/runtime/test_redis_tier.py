"""The response cache's Redis tier against a real redis-server: TTL and prefix, a second gateway finding a response
the first one cached, and a gateway that keeps serving (local tier, no client error) when Redis dies."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from runtime.gateway.shared_tier import DEFAULT_PREFIX, RedisSharedTier, shared_tier_from_url
from tests.runtime.gateway_fakes import FakeReplica, auth, fake_replicas, scenario, serve_gateway

CACHE = {"response_cache": {"type": "tiered", "params": {"shared": True}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def _greedy(prompt: str) -> dict[str, object]:
    return {"model": "chat", "prompt": prompt, "max_tokens": 4, "temperature": 0}


def _post(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, headers=auth(), timeout=10.0)


@pytest.mark.timeout(30)
def test_redis_tier_stores_bytes_with_ttl_under_its_prefix() -> None:
    with redis_server() as (url, _):
        tier = shared_tier_from_url(url)
        assert isinstance(tier, RedisSharedTier)
        raw = redis.Redis.from_url(url)
        try:
            tier.put(10.0, 0xABC, b'{"answer": 1}', 13, ttl_s=5.0)
            got = tier.get(20.0, 0xABC)
            assert got is not None and got.value == b'{"answer": 1}' and got.size_bytes == 13
            assert got.expires_at is not None and 24.0 < got.expires_at <= 25.0
            assert raw.get(f"{DEFAULT_PREFIX}{0xABC:016x}") == b'{"answer": 1}'
            assert 0 < raw.pttl(f"{DEFAULT_PREFIX}{0xABC:016x}") <= 5000
            assert tier.get(20.0, 0xABD) is None
            tier.put(0.0, 7, b"short", 5, ttl_s=0.05)
            time.sleep(0.15)
            assert tier.get(0.0, 7) is None  # Redis expired it
            with pytest.raises(TypeError, match="stores response bytes"):
                tier.put(0.0, 8, {"not": "bytes"}, 1, ttl_s=1.0)
            assert tier.errors == 0
        finally:
            raw.close()
            tier.close()
    assert shared_tier_from_url(None) is None


@pytest.mark.timeout(60)
def test_a_second_gateway_finds_the_cached_response_through_redis() -> None:
    r1, r2 = FakeReplica("chat", "one"), FakeReplica("chat", "two")
    with redis_server() as (url, _), fake_replicas(r1, r2) as (s1, s2):
        sc = scenario(CACHE, live={"redis_url": url})
        with (
            serve_gateway(sc, {"chat": [("one", s1.url)]}) as (gw1, g1),
            serve_gateway(sc, {"chat": [("two", s2.url)]}) as (gw2, g2),
        ):
            assert isinstance(gw1.cache.shared, RedisSharedTier)  # built from live.redis_url
            assert gw1.cache is not gw2.cache
            first = _post(g1.url, _greedy("shared across gateways"))
            assert first.status_code == 200 and first.headers["x-odhsim-cache"] == "miss"
            other = _post(g2.url, _greedy("shared across gateways"))
            assert other.status_code == 200 and other.headers["x-odhsim-cache"] == "hit"
            assert other.content == first.content
            assert (r1.hits, r2.hits) == (1, 0)  # the second gateway never asked its replica
            assert gw2.metrics.value("odhsim_gateway_cache_hits_total", {"model": "chat", "tier": "shared"}) == 1
            again = _post(g2.url, _greedy("shared across gateways"))  # promoted into gateway 2's local tier
            assert again.headers["x-odhsim-cache"] == "hit"
            assert gw2.metrics.value("odhsim_gateway_cache_hits_total", {"model": "chat", "tier": "local"}) == 1


@pytest.mark.timeout(60)
def test_gateway_keeps_serving_when_redis_dies() -> None:
    r = FakeReplica("chat", "a")
    with redis_server() as (url, proc), fake_replicas(r) as (s,):
        tier = shared_tier_from_url(url, backoff_s=0.5)
        assert tier is not None
        with serve_gateway(scenario(CACHE), {"chat": [("a", s.url)]}, shared_tier=tier) as (gw, g):
            assert _post(g.url, _greedy("before")).headers["x-odhsim-cache"] == "miss"
            proc.kill()
            proc.wait(10)
            t0 = time.perf_counter()
            answers = [
                _post(g.url, _greedy("before")),  # still in the local tier
                _post(g.url, _greedy("after")),  # a miss: the replica answers; storing in Redis fails quietly
                _post(g.url, _greedy("after")),  # ... and the local tier has it
            ]
            elapsed = time.perf_counter() - t0
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert [a.headers["x-odhsim-cache"] for a in answers] == ["hit", "miss", "hit"]
            assert r.hits == 2 and elapsed < 3.0
            assert tier.errors >= 1 and "ConnectionError" in tier.last_error
            time.sleep(0.6)  # past the back-off: the tier tries Redis again, fails again, still no client error
            assert _post(g.url, _greedy("later")).status_code == 200
            assert tier.errors >= 2
            assert (
                gw.metrics.value("odhsim_gateway_requests_total", {"model": "chat", "status": 200, "reason": "ok"}) == 3
            )


@pytest.mark.timeout(30)
def test_unreachable_redis_from_the_start_is_only_a_miss() -> None:
    r = FakeReplica("chat", "a")
    tier = shared_tier_from_url(f"redis://127.0.0.1:{_free_port()}/0")
    assert tier is not None
    with fake_replicas(r) as (s,), serve_gateway(scenario(CACHE), {"chat": [("a", s.url)]}, shared_tier=tier) as _gw:
        _, g = _gw
        assert [_post(g.url, _greedy("x")).headers["x-odhsim-cache"] for _ in range(2)] == ["miss", "hit"]
        assert tier.errors == 1 and tier.skipped >= 1  # one failure, then it stays away for the back-off
