"""Issue 14, part 2, live over real HTTP on 127.0.0.1: the response cache scoped per tenant, Redis with a password,
a key prefix and a visible outage, transport limits answered in JSON (431, 408, 400 for malformed HTTP), a short
404, replicas that need the run's secret, /metrics behind a key, and a gateway stall not blamed on a replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from odhsim.scenario.live import TransportLimits
from odhsim.scenario.model import Scenario
from runtime.gateway.core import build_gateway
from runtime.gateway.shared_tier import RedisSharedTier, scenario_prefix, shared_tier_from_url
from runtime.transport import uvicorn_options
from tests.runtime.gateway_fakes import (
    KEY_ALL,
    KEY_LOW,
    FakeReplica,
    ServerThread,
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
    """A password-protected redis-server of the test's own: its port and a client that authenticates."""
    with redis_server(password) as (url, _):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = redis.Redis(port=port, password=password, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            yield port, client
        finally:
            client.close()


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


# -- 3. transport limits: 431, 408, JSON for malformed HTTP, a short 404 ------------------------------------------

READ_TIMEOUT_S = 1.5
TRANSPORT = {"max_header_bytes": 16384, "request_read_timeout_s": READ_TIMEOUT_S, "keep_alive_s": 5}


class GuardedServerThread(ServerThread):
    """The gateway served as `odhsim serve` serves it: uvicorn with runtime.transport's protocol and limits."""

    def __init__(self, app: Any, limits: TransportLimits, on_refused: Any = None) -> None:
        super().__init__(app, lifespan="on")
        options = uvicorn_options(limits, backstop_s=1.0, on_refused=on_refused)
        config = uvicorn.Config(
            app, lifespan="on", log_level="critical", access_log=False, loop="asyncio", timeout_graceful_shutdown=1,
            **options,
        )  # fmt: skip
        self.server = uvicorn.Server(config)


@contextmanager
def guarded_gateway(sc: Scenario, upstreams: dict[str, list[tuple[str, str]]]) -> Iterator[tuple[Any, ServerThread]]:
    gateway = build_gateway(sc, keys=make_keys())
    for model, items in upstreams.items():
        for name, url in items:
            gateway.add_replica(model, name, url)
    server = GuardedServerThread(gateway.app, sc.live.transport, gateway.metrics.transport_refused).start()
    try:
        yield gateway, server
    finally:
        server.stop()


def raw_exchange(port: int, data: bytes, *, wait_s: float = 10.0) -> tuple[int, dict[str, str], bytes, float]:
    """Send raw bytes, read until the server closes (or `wait_s`): (status, headers, body, seconds to the answer)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        if data:
            with contextlib.suppress(OSError):
                sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                head, _, rest = got.partition(b"\r\n\r\n")
                length = next(
                    (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                     if k.strip().lower() == b"content-length"),
                    None,
                )  # fmt: skip
                if length is not None and len(rest) >= length:
                    break
    elapsed = time.monotonic() - t0
    assert got, "no answer at all"
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, elapsed


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[Any, ServerThread, FakeReplica]]:
    r = FakeReplica("chat", "a")
    sc = chat_only(live={"transport": TRANSPORT})
    with fake_replicas(r) as (s,), guarded_gateway(sc, {"chat": [("a", s.url)]}) as (gw, srv):
        yield gw, srv, r


def _req(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


AUTH_H = {"authorization": f"Bearer {KEY_ALL}", "content-type": "application/json"}
CHUNKED = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
# (name, raw request, status, error code under /v1 or None for a plain {"error": ...})
TRANSPORT_MATRIX: list[tuple[str, bytes, int, str | None]] = [
    ("64 kB header", _req("GET", "/v2/health/live", {"x-big": "a" * 65536}), 431, None),
    ("64 kB header on /v1", _req("GET", "/v1/models", {"x-big": "a" * 65536}), 431, "headers_too_large"),
    ("many small headers", _req("GET", "/v2/health/live", {f"x-h{i}": "v" * 100 for i in range(400)}), 431, None),
    ("32 kB request line", _req("GET", "/v2/models/" + "m" * 32768, {}), 431, None),
    ("malformed request line", b"GARBAGE\r\n\r\n", 400, None),
    ("header without a colon", b"GET /v2/health/live HTTP/1.1\r\nhost 127.0.0.1\r\n\r\n", 400, None),
    (
        "bad chunk size",
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        400,
        "bad_http",
    ),
    ("8 kB model name in the path", _req("GET", "/v2/models/" + "m" * 8000, AUTH_H), 404, None),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,raw,status,code", TRANSPORT_MATRIX, ids=[m[0] for m in TRANSPORT_MATRIX])
def test_transport_bad_input_matrix_answers_json(
    guarded: Any, name: str, raw: bytes, status: int, code: str | None
) -> None:
    _, srv, _ = guarded
    got, headers, body, elapsed = raw_exchange(srv.port, raw)
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    if code is None:
        assert isinstance(doc["error"], str) and doc["error"]
    else:
        assert doc["error"]["code"] == code and doc["error"]["message"]
    assert len(body) < 600  # never an echo of what was sent
    assert elapsed < 5.0
    health = httpx.get(f"{srv.url}/v2/health/live", timeout=5)  # and the server keeps serving
    assert health.status_code == 200


@pytest.mark.timeout(60)
def test_long_model_names_are_never_echoed_whole(guarded: Any) -> None:
    _, srv, _ = guarded
    name = "%0A<b>" + "m" * 10_000
    resp = httpx.get(f"{srv.url}/v2/models/{name}/ready", headers=auth(), timeout=10)
    assert resp.status_code == 404 and len(resp.content) < 300
    message = resp.json()["error"]
    assert "\\n<b>" in message and "(10004 characters)" in message and "\n" not in message
    for model in ("m" * 200, "m" * 60_000):  # under and over the body's own 256-character bound on `model`
        body = {"model": model, "prompt": "x", "max_tokens": 1}
        got = httpx.post(f"{srv.url}/v1/completions", json=body, headers=auth(), timeout=10)
        assert got.status_code in (400, 404) and len(got.content) < 400, got.text[:400]
        assert got.json()["error"]["code"] in ("model_not_found", "bad_request")


@pytest.mark.timeout(60)
def test_slow_body_gets_a_json_408_within_the_timeout_and_is_counted(guarded: Any) -> None:
    gw, srv, r = guarded
    hits = r.hits
    head = _req("POST", "/v1/completions", {**AUTH_H, "content-length": "200"})
    head = head.replace(b"content-length: 0\r\n", b"")
    status, headers, body, elapsed = raw_exchange(srv.port, head + b'{"model": "chat", ', wait_s=10)
    assert status == 408 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT_S - 0.2 < elapsed < READ_TIMEOUT_S + 2.5
    assert r.hits == hits  # nothing reached the replica
    labels = {"model": "unknown", "status": 408, "reason": "request_timeout"}
    assert gw.metrics.value("odhsim_gateway_requests_total", labels) >= 1


@pytest.mark.timeout(60)
def test_idle_and_half_sent_heads_are_answered_408_and_dropped(guarded: Any) -> None:
    gw, srv, _ = guarded
    idle = raw_exchange(srv.port, b"", wait_s=10)
    half = raw_exchange(srv.port, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n", wait_s=10)
    for status, headers, body, elapsed in (idle, half):
        assert status == 408 and headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] and READ_TIMEOUT_S - 0.2 < elapsed < READ_TIMEOUT_S + 2.5
    assert (
        gw.metrics.value("odhsim_gateway_transport_refusals_total", {"status": 408, "reason": "request_timeout"}) >= 2
    )


@pytest.mark.timeout(90)
def test_many_slow_connections_are_all_released_within_the_timeout(guarded: Any) -> None:
    _, srv, _ = guarded
    socks = []
    try:
        for _ in range(50):
            sk = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            head = f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_ALL}\r\n"
            sk.sendall(head.encode() + b"content-length: 100\r\n\r\n{")
            socks.append(sk)
        t0 = time.monotonic()
        closed = 0
        for sk in socks:
            data = b""
            while chunk := sk.recv(65536):
                data += chunk
            closed += data.startswith(b"HTTP/1.1 408")
        assert closed == 50 and time.monotonic() - t0 < READ_TIMEOUT_S + 5.0
        t1 = time.monotonic()
        assert httpx.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200
        assert time.monotonic() - t1 < 1.0
    finally:
        for sk in socks:
            sk.close()


# -- 4. replicas answer the gateway only; their environment holds no gateway keys; /metrics behind a key ----------

MLP = {"mlp": {"input_dim": 4, "hidden": [8], "classes": 3, "seed": 2}, "max_batch_delay_ms": 1}
DIGITS = {"name": "digits", "kind": "fixed", "gpu": "L4", "replicas": 1, "service_time": {"mean_s": 0.01}, "live": MLP}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


@pytest.mark.timeout(150)
def test_serve_gives_replicas_a_secret_and_no_api_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.serve import LiveStack

    monkeypatch.setenv("ODHSIM_API_KEYS", f"{KEY_ALL}:acme:critical")
    monkeypatch.setenv("ODHSIM_TORCH_THREADS", "1")
    doc = chat_only().model_dump(mode="json", exclude_none=True)
    sc = Scenario.model_validate(
        {
            **{k: doc[k] for k in ("name", "seed", "gpu_pool", "workload")},
            "models": [DIGITS],
            "live": {"port": 0, "request_timeout_s": 20.0, "scrape_interval_s": 0.1},
        }
    )
    infer = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}

    async def main() -> None:
        stack = LiveStack(sc, port=0, device="cpu", out_dir=tmp_path)
        try:
            await stack.start()
            await stack.wait_deployed(120)
            proc = stack.controllers["digits"].replicas[0].proc
            assert proc is not None and proc.alive()
            async with httpx.AsyncClient(timeout=20) as c:
                through = await c.post(f"{stack.url}/v2/models/digits/infer", json=infer, headers=auth())
                assert through.status_code == 200, through.text  # the gateway sends the secret
                for method, path, body in (
                    ("GET", "/v2/health/ready", None),
                    ("GET", "/metrics", None),
                    ("POST", "/v2/models/digits/infer", infer),
                ):
                    direct = await c.request(method, proc.url + path, json=body)
                    assert direct.status_code == 401, (path, direct.text)
                    assert direct.headers["content-type"].startswith("application/json") and direct.json()["error"]
                wrong = await c.post(
                    proc.url + "/v2/models/digits/infer", json=infer, headers={"x-odhsim-replica-secret": "guess"}
                )
                assert wrong.status_code == 401
                right = await c.post(proc.url + "/v2/models/digits/infer", json=infer, headers=proc.headers)
                assert right.status_code == 200
            env = _environ(proc.pid)
            assert "ODHSIM_API_KEYS" not in env and "ODHSIM_REDIS_PASSWORD" not in env
            assert env["ODHSIM_REPLICA_SECRET"] == stack.replica_secret == proc.secret
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert stack.replica_secret.encode() not in cmdline  # never on the command line (ps shows it)
        finally:
            await stack.stop()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_metrics_auth_key_requires_a_valid_key_and_none_does_not() -> None:
    r = FakeReplica("chat", "a")
    with fake_replicas(r) as (s,):
        with serve_gateway(chat_only(live={"metrics_auth": "key"}), {"chat": [("a", s.url)]}) as (_, g):
            bare = httpx.get(f"{g.url}/metrics", timeout=5)
            assert bare.status_code == 401 and bare.json()["error"]
            assert httpx.get(f"{g.url}/metrics", headers=auth("sk-wrong"), timeout=5).status_code == 401
            good = httpx.get(f"{g.url}/metrics", headers=auth(), timeout=5)
            assert good.status_code == 200 and "odhsim_gateway_requests" in good.text
        with serve_gateway(chat_only(), {"chat": [("a", s.url)]}) as (_, g):
            assert httpx.get(f"{g.url}/metrics", timeout=5).status_code == 200  # the default: none


# -- 5. the event loop's lag: measured, and a gateway stall is not the replica's fault -----------------------------


@pytest.mark.timeout(90)
def test_injected_loop_stall_does_not_open_the_breaker_of_a_healthy_replica() -> None:
    r = FakeReplica("chat", "a", delay_s=3.0)  # it answers after the stall; the 1 s timeout falls inside it
    breaker = {"type": "consecutive-failures", "params": {"failure_threshold": 1, "cooldown_s": 60}}
    sc = chat_only({"resilience": {"breaker": breaker}}, live={"request_timeout_s": 1.0, "loop_stall_s": 0.5})
    failures: list[tuple[str, str, str]] = []
    with fake_replicas(r) as (s,), serve_gateway(sc, {"chat": [("a", s.url)]}) as (gw, srv):
        gw.on_replica_failure = lambda *args: failures.append(args)
        answers: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: answers.append(_post(srv.url, _greedy("during a stall"))))
        sender.start()
        deadline = time.monotonic() + 5
        while r.active == 0 and time.monotonic() < deadline:  # the attempt is at the replica
            time.sleep(0.01)
        assert srv.loop is not None
        srv.loop.call_soon_threadsafe(time.sleep, 2.5)  # the test hook: block the gateway's event loop for 2.5 s
        r.delay_s = 0.0  # the retry is answered at once
        sender.join(30)
        assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
        text = httpx.get(f"{srv.url}/metrics", timeout=5).text
        excused = gw.metrics.value("odhsim_gateway_attempts_excused_total", {"model": "chat", "kind": "timeout"})
        assert excused == 1  # the attempt did time out: during the stall
        assert 'odhsim_gateway_breaker_open{model="chat"} 0.0' in text
        assert failures == [] and "odhsim_gateway_upstream_failures_total{" not in text
        assert r.hits == 2  # the stalled attempt, then its free retry
        # the monitor samples every 50 ms once the gateway starts (at the first request), so right after the stall
        # it may have recorded only the stalled sample: give it a few more intervals before reading the histogram
        deadline = time.monotonic() + 5
        while _metric(text, "odhsim_gateway_event_loop_lag_seconds_count") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            text = httpx.get(f"{srv.url}/metrics", timeout=5).text
        lag_count = _metric(text, "odhsim_gateway_event_loop_lag_seconds_count")
        assert lag_count >= 2 and _metric(text, "odhsim_gateway_event_loop_lag_seconds_sum") > 2.0
        slow = _metric(text, 'odhsim_gateway_event_loop_lag_seconds_bucket{le="1.0"}')
        assert lag_count - slow >= 1  # the 2.5 s stall was measured
        after = _post(srv.url, _greedy("after the stall"))
        assert after.status_code == 200 and gw.routes["chat"].breaker_state(gw.clock()) == "closed"


@pytest.mark.timeout(60)
def test_a_real_replica_timeout_still_counts_without_a_stall() -> None:
    r = FakeReplica("chat", "a", delay_s=2.0)
    breaker = {"type": "consecutive-failures", "params": {"failure_threshold": 1, "cooldown_s": 60}}
    sc = chat_only({"resilience": {"breaker": breaker}}, live={"request_timeout_s": 0.5, "loop_stall_s": 0.5})
    with fake_replicas(r) as (s,), serve_gateway(sc, {"chat": [("a", s.url)]}) as (gw, srv):
        resp = _post(srv.url, _greedy("slow replica"))
        assert resp.status_code == 502
        assert gw.metrics.value("odhsim_gateway_upstream_failures_total", {"model": "chat", "kind": "timeout"}) == 1
        assert gw.metrics.value("odhsim_gateway_attempts_excused_total", {"model": "chat", "kind": "timeout"}) == 0
        assert gw.routes["chat"].breaker_state(gw.clock()) == "open"
