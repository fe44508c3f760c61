"""Issue 14, part 2, live over real HTTP on 127.0.0.1: the response cache scoped per tenant, Redis with a password,
a key prefix and a visible outage, transport limits answered in JSON (431, 408, 400 for malformed HTTP), a short
404, replicas that need the run's secret, /metrics behind a key, and a gateway stall not blamed on a replica."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from odhsim.scenario.model import Scenario
from runtime.gateway.core import build_gateway
from runtime.gateway.shared_tier import RedisSharedTier, scenario_prefix, shared_tier_from_url
from tests.runtime.gateway_fakes import (
    KEY_ALL,
    KEY_LOW,
    FakeReplica,
    auth,
    fake_replicas,
    make_keys,
    scenario,
    serve_gateway,
)
from tests.runtime.test_redis_tier import redis_server

CACHE: dict[str, Any] = {"response_cache": {"type": "tiered", "params": {"shared": False}}}


def chat_only(gateway: dict[str, Any] | None = None, live: dict[str, Any] | None = None) -> Scenario:
    """One LLM model, `chat`, with one replica: what a LiveStack with fake processes serves."""
    lm = {"lm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 128}}
    return Scenario.model_validate(
        {
            "name": "hardening",
            "seed": 3,
            "gpu_pool": [{"gpu": "L4", "count": 2}],
            "models": [{"name": "chat", "gpu": "L4", "profile": "llama3.2-1b", "replicas": 1, "live": lm}],
            "gateway": gateway or {},
            "live": {"request_timeout_s": 10.0, "scrape_interval_s": 0.05, **(live or {})},
            "workload": {"sources": [{"kind": "poisson", "rate": 1, "requests": 1}]},
        }
    )


def _greedy(prompt: str) -> dict[str, Any]:
    return {"model": "chat", "prompt": prompt, "max_tokens": 4, "temperature": 0}


def _post(url: str, body: dict[str, Any], key: str = KEY_ALL) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, headers=auth(key), timeout=10.0)


# -- 1. the response cache is scoped per tenant ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_tenant_b_never_gets_tenant_a_cached_answer_and_sees_no_hit() -> None:
    r = FakeReplica("chat", "a")
    with fake_replicas(r) as (s,), serve_gateway(scenario(CACHE), {"chat": [("a", s.url)]}) as (_, g):
        first = _post(g.url, _greedy("secret plan"), KEY_ALL)  # tenant acme
        again = _post(g.url, _greedy("secret plan"), KEY_ALL)
        other = _post(g.url, _greedy("secret plan"), KEY_LOW)  # tenant batch: the same greedy prompt
        assert [x.status_code for x in (first, again, other)] == [200, 200, 200]
        assert [x.headers["x-odhsim-cache"] for x in (first, again, other)] == ["miss", "hit", "miss"]
        assert r.hits == 2  # tenant batch's request went to the replica
        assert again.json()["choices"] == first.json()["choices"]
        assert again.json()["id"] != first.json()["id"]  # a hit is a new response: never the original's id
        assert other.json()["id"] != first.json()["id"]


@pytest.mark.timeout(60)
def test_share_across_tenants_is_explicit_and_a_hit_gets_a_fresh_id() -> None:
    r = FakeReplica("chat", "a")
    shared = {"response_cache": {**CACHE["response_cache"], "share_across_tenants": True}}
    with fake_replicas(r) as (s,), serve_gateway(scenario(shared), {"chat": [("a", s.url)]}) as (_, g):
        first = _post(g.url, _greedy("common question"), KEY_ALL)
        other = _post(g.url, _greedy("common question"), KEY_LOW)
        assert [first.headers["x-odhsim-cache"], other.headers["x-odhsim-cache"]] == ["miss", "hit"]
        assert r.hits == 1
        assert other.json()["choices"] == first.json()["choices"]
        assert other.json()["id"].startswith("cmpl-") and other.json()["id"] != first.json()["id"]


# -- 1. Redis: a password and a key prefix -----------------------------------------------------------------------


@contextmanager
def redis_with_password(password: str) -> Iterator[tuple[int, Any]]:
    import shutil
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--requirepass", password], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        yield port, client
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_redis_tier_authenticates_and_keeps_its_keys_under_the_scenario_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    r = FakeReplica("chat", "a")
    cache = {"response_cache": {"type": "tiered", "params": {"shared": True}}}
    with redis_with_password("s3cret-pw") as (port, raw), fake_replicas(r) as (s,):
        url = f"redis://127.0.0.1:{port}/0"
        sc = scenario(cache, live={"redis_url": url})
        monkeypatch.delenv("ODHSIM_REDIS_PASSWORD", raising=False)
        no_pw = build_gateway(sc, keys=make_keys())  # no password anywhere: Redis refuses, counted as errors
        assert isinstance(no_pw.shared_tier, RedisSharedTier)
        assert no_pw.shared_tier.get(0.0, 1) is None and no_pw.shared_tier.errors == 1
        assert "Authentication" in no_pw.shared_tier.last_error or "NOAUTH" in no_pw.shared_tier.last_error
        no_pw.shared_tier.close()
        monkeypatch.setenv("ODHSIM_REDIS_PASSWORD", "s3cret-pw")
        gw = build_gateway(sc, keys=make_keys())
        tier = gw.shared_tier
        assert isinstance(tier, RedisSharedTier) and tier.prefix == "odhsim:gateway-test:rcache:"
        assert tier.prefix == scenario_prefix("gateway-test")
        tier.close()
        with serve_gateway(sc, {"chat": [("a", s.url)]}) as (gw2, g):
            assert _post(g.url, _greedy("stored in redis")).headers["x-odhsim-cache"] == "miss"
            assert gw2.shared_tier.errors == 0
        keys = [k.decode() for k in raw.scan_iter(match="*")]
        assert len(keys) == 1 and keys[0].startswith("odhsim:gateway-test:rcache:")
        in_url = shared_tier_from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/0", password="wrong")
        assert in_url is not None and in_url.get(0.0, 2) is None and in_url.errors == 0  # the URL's password wins
        in_url.close()
        custom = scenario(cache, live={"redis_url": url, "redis_prefix": "team-x:cache:"})
        gw3 = build_gateway(custom, keys=make_keys())
        assert gw3.shared_tier.prefix == "team-x:cache:"
        gw3.shared_tier.close()


# -- 2. a Redis outage is visible: /metrics and an event ---------------------------------------------------------


class _FakeProc:
    """A 'replica process' that is a fake replica server in this process (the controller's ProcessLike)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pid = 0
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.returncode is None

    def terminate(self, grace_s: float = 0.0) -> int:
        self.returncode = 0
        return 0

    def kill(self) -> int:
        self.returncode = -9
        return -9


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


@pytest.mark.timeout(90)
def test_redis_outage_shows_in_metrics_and_in_the_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.serve import LiveStack

    monkeypatch.setenv("ODHSIM_API_KEYS", f"{KEY_ALL}:acme:critical")
    r = FakeReplica("chat", "a")
    cache = {"response_cache": {"type": "tiered", "params": {"shared": True}}}
    with redis_server() as (url, proc), fake_replicas(r) as (s,):
        sc = chat_only(cache, live={"redis_url": url, "port": 0})

        async def main() -> tuple[str, str, list[Any]]:
            stack = LiveStack(sc, port=0, out_dir=tmp_path, spawn=lambda m, name: _FakeProc(s.url))
            try:
                await stack.start()
                await stack.wait_deployed(30)
                async with httpx.AsyncClient(base_url=stack.url, timeout=10, headers=auth()) as c:
                    assert (await c.post("/v1/completions", json=_greedy("one"))).status_code == 200
                    before = (await c.get("/metrics")).text
                    proc.kill()
                    proc.wait(10)
                    answered = await c.post("/v1/completions", json=_greedy("two"))
                    assert answered.status_code == 200  # served by the replica all the same
                    after = (await c.get("/metrics")).text
                return before, after, list(stack.log.events)
            finally:
                await stack.stop()

        before, after, events = asyncio.run(main())
    assert _metric(before, "odhsim_gateway_shared_tier_up") == 1.0
    assert _metric(before, "odhsim_gateway_shared_tier_errors_total") == 0.0
    assert _metric(after, "odhsim_gateway_shared_tier_up") == 0.0
    assert _metric(after, "odhsim_gateway_shared_tier_errors_total") >= 1.0
    down = [e for e in events if e.kind == "shared_tier_down"]
    assert len(down) == 1 and "ConnectionError" in down[0].detail
    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "shared_tier_down" for e in written)


def test_shared_tier_reports_going_down_and_coming_back() -> None:
    with redis_server() as (url, _):
        t = [0.0]
        tier = shared_tier_from_url(url, backoff_s=1.0)
        assert tier is not None
        tier.clock = lambda: t[0]
        seen: list[tuple[bool, str]] = []
        tier.on_change = lambda up, detail: seen.append((up, detail))
        tier.put(0.0, 1, b"x", 1, 10.0)
        assert tier.up and seen == []
        real = tier.client
        tier.client = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1)  # nothing listens there
        assert tier.get(0.0, 1) is None and not tier.up
        assert [u for u, _ in seen] == [False]
        tier.client = real
        assert tier.get(0.0, 1) is None  # still in its back-off: not even tried
        t[0] = 2.0
        got = tier.get(0.0, 1)
        assert got is not None and got.value == b"x" and tier.up
        assert [u for u, _ in seen] == [False, True]
        tier.close()
