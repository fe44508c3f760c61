"""The response cache's Redis tier against a real redis-server: TTL and prefix, a second gateway finding a response
the first one cached, and a gateway that keeps serving (local tier, no client error) when Redis dies.

With $ODHSIM_TEST_REDIS_URL set (the CI starts a redis-server and exports it) the second-gateway test uses that
server under a key prefix of its own, deleting only its own keys; tests that kill Redis always start their own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from runtime.gateway.core import build_gateway
from runtime.gateway.shared_tier import DEFAULT_PREFIX, RedisSharedTier, shared_tier_from_url
from tests.runtime.gateway_fakes import FakeReplica, auth, fake_replicas, make_keys, scenario, serve_gateway

TEST_REDIS_ENV = "ODHSIM_TEST_REDIS_URL"

CACHE = {"response_cache": {"type": "tiered", "params": {"shared": True}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(password: str | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own on a free loopback port (with `requirepass` when given a password); its
    URL (without the password) and process, killed at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if password is not None:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=password, socket_timeout=0.5, socket_connect_timeout=0.5)
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


@contextmanager
def shared_redis() -> Iterator[str]:
    """$ODHSIM_TEST_REDIS_URL's server when set (it must answer), else a redis-server of this test's own."""
    url = os.environ.get(TEST_REDIS_ENV)
    if not url:
        with redis_server() as (own, _):
            yield own
        return
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.fail(f"${TEST_REDIS_ENV}={url} does not answer: {type(err).__name__}: {err}")
    finally:
        client.close()
    yield url


def _delete_prefix(url: str, prefix: str) -> int:
    """Delete the keys under `prefix` (only those: the server may be shared); how many there were."""
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


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
    prefix = f"odhsim-test:{uuid.uuid4().hex}:"  # this run's keys only, on a server others may share
    with shared_redis() as url, fake_replicas(r1, r2) as (s1, s2):
        sc = scenario(CACHE, live={"redis_url": url})
        built = build_gateway(sc, keys=make_keys())  # the tier comes from live.redis_url (connects lazily)
        assert isinstance(built.cache.shared, RedisSharedTier) and built.cache.shared is built.shared_tier
        assert built.shared_tier.prefix == "odhsim:gateway-test:rcache:"  # per scenario, unless live.redis_prefix
        built.shared_tier.close()
        tier1, tier2 = (shared_tier_from_url(url, prefix=prefix) for _ in range(2))
        assert tier1 is not None and tier2 is not None
        try:
            with (
                serve_gateway(sc, {"chat": [("one", s1.url)]}, shared_tier=tier1) as (gw1, g1),
                serve_gateway(sc, {"chat": [("two", s2.url)]}, shared_tier=tier2) as (gw2, g2),
            ):
                assert gw1.cache.shared is tier1 and gw2.cache.shared is tier2
                assert gw1.cache is not gw2.cache
                first = _post(g1.url, _greedy("shared across gateways"))
                assert first.status_code == 200 and first.headers["x-odhsim-cache"] == "miss"
                other = _post(g2.url, _greedy("shared across gateways"))
                assert other.status_code == 200 and other.headers["x-odhsim-cache"] == "hit"
                assert other.json()["choices"] == first.json()["choices"]
                assert other.json()["id"] != first.json()["id"]  # a hit answers under a fresh id
                assert (r1.hits, r2.hits) == (1, 0)  # the second gateway never asked its replica
                shared_hits = {"model": "chat", "tier": "shared"}
                assert gw2.metrics.value("odhsim_gateway_cache_hits_total", shared_hits) == 1
                again = _post(g2.url, _greedy("shared across gateways"))  # promoted into gateway 2's local tier
                assert again.headers["x-odhsim-cache"] == "hit"
                local_hits = {"model": "chat", "tier": "local"}
                assert gw2.metrics.value("odhsim_gateway_cache_hits_total", local_hits) == 1
            assert tier1.errors == tier2.errors == 0
        finally:
            tier1.close()
            tier2.close()
            stored = _delete_prefix(url, prefix)
        assert stored == 1  # the one response, under this run's prefix


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
