"""Test doubles for the gateway tests: fake replicas speaking the replica HTTP API (runtime/README.md), a uvicorn
server on a free 127.0.0.1 port in a background thread, a server that resets every connection, and scenarios."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from odhsim.scenario.model import Scenario
from policies.caching.tiers import SharedTier
from runtime.gateway.auth import KeyStore, Principal
from runtime.gateway.core import Gateway, build_gateway

KEY_ALL = "sk-all-critical"
KEY_LOW = "sk-low"
KEY_CHAT_ONLY = "sk-chat-only"


def make_keys() -> KeyStore:
    return KeyStore.from_keys(
        {
            KEY_ALL: Principal("acme", "critical"),
            KEY_LOW: Principal("batch", "low"),
            KEY_CHAT_ONLY: Principal("guest", "normal", frozenset({"chat"})),
        }
    )


def auth(key: str = KEY_ALL) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class FakeReplica:
    """What one fake replica does; tests change the fields while it serves (same process, plain attributes)."""

    model: str
    name: str
    delay_s: float = 0.0  # before answering (non-streaming) or before the first token
    token_delay_s: float = 0.0  # between streamed tokens
    fail: str | None = None  # None | "500" | "midstream"
    capacity: int = 4  # running slots reported in /metrics; the rest counts as waiting
    hits: int = 0  # completion / infer requests received
    active: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def text(self, n: int) -> str:
        return "".join(chr(97 + i % 26) for i in range(n))


def _chunk(r: FakeReplica, text: str, finish: str | None, usage: dict[str, int] | None) -> bytes:
    doc: dict[str, Any] = {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1,
        "model": r.model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        doc["usage"] = usage
    return f"data: {json.dumps(doc)}\n\n".encode()


def fake_replica_app(r: FakeReplica) -> Starlette:
    headers = {"x-odhsim-replica": r.name}

    async def completions(request: Request) -> Response:
        body = await request.json()
        r.hits += 1
        r.bodies.append(body)
        if r.fail == "500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500, headers=headers)
        n = int(body.get("max_tokens", 16))
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        usage = {"prompt_tokens": len(prompt.encode()) + 1, "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                r.active += 1
                try:
                    await asyncio.sleep(r.delay_s)
                    for i in range(n):
                        if i:
                            await asyncio.sleep(r.token_delay_s)
                        if r.fail == "midstream" and i == 2:
                            raise RuntimeError("replica died mid-stream")
                        last = i == n - 1
                        yield _chunk(r, r.text(n)[i], "length" if last else None, usage if last else None)
                    yield b"data: [DONE]\n\n"
                finally:
                    r.active -= 1

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
        r.active += 1
        try:
            await asyncio.sleep(r.delay_s)
        finally:
            r.active -= 1
        doc = {
            "id": f"cmpl-{r.name}-{r.hits}",
            "object": "text_completion",
            "created": 1,
            "model": r.model,
            "choices": [{"index": 0, "text": r.text(n), "logprobs": None, "finish_reason": "length"}],
            "usage": usage,
        }
        return JSONResponse(doc, headers=headers)

    async def infer(request: Request) -> Response:
        body = await request.json()
        r.hits += 1
        r.bodies.append(body)
        if r.fail == "500":
            return JSONResponse({"error": "boom"}, 500, headers=headers)
        r.active += 1
        try:
            await asyncio.sleep(r.delay_s)
        finally:
            r.active -= 1
        rows = body["inputs"][0]["shape"][0]
        out = {
            "model_name": request.path_params["model"],
            "model_version": "v1",
            "id": body.get("id"),
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [rows], "data": [1] * rows}],
        }
        return JSONResponse(out, headers=headers)

    async def metrics(request: Request) -> Response:
        running = min(r.active, r.capacity)
        waiting = r.active - running
        lines = [
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="{r.model}"}} {waiting}',
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{model_name="{r.model}"}} {running}',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{model_name="{r.model}"}} {min(1.0, 0.1 * r.active)}',
        ]
        return PlainTextResponse("\n".join(lines) + "\n", headers=headers)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True}, headers=headers)

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/v2/health/ready", ready),
        ]
    )


class ServerThread:
    """uvicorn serving `app` on a free 127.0.0.1 port in a daemon thread with its own event loop."""

    def __init__(self, app: Any, *, lifespan: str = "off") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            log_level="critical",
            access_log=False,
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the server's event loop (where the gateway lives) and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ResetServer:
    """Accepts each connection, reads the request, and resets it (RST): what a crashing process looks like."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.resets = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data.startswith(b"GET /metrics"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    continue
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.resets += 1

    def __enter__(self) -> ResetServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def scenario(gateway: dict[str, Any] | None = None, live: dict[str, Any] | None = None, **extra: Any) -> Scenario:
    """Models: chat (llm, fallback backup), backup (llm), digits (fixed MLP, 4 inputs), cold (llm, scales from 0)."""
    lm = {"lm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 128}}
    models = [
        {"name": "chat", "gpu": "L4", "profile": "llama3.2-1b", "replicas": 2, "fallback": "backup", "live": lm},
        {"name": "backup", "gpu": "L4", "profile": "llama3.2-1b", "replicas": 1, "live": lm},
        {
            "name": "digits",
            "kind": "fixed",
            "gpu": "L4",
            "replicas": 1,
            "service_time": {"mean_s": 0.01},
            "live": {"mlp": {"input_dim": 4, "hidden": [8], "classes": 3}},
        },
        {
            "name": "cold",
            "gpu": "L4",
            "profile": "llama3.2-1b",
            "replicas": 0,
            "autoscaling": {"type": "kpa", "params": {"min_replicas": 0, "max_replicas": 2}},
            "live": lm,
        },
    ]
    doc: dict[str, Any] = {
        "name": "gateway-test",
        "seed": 11,
        "gpu_pool": [{"gpu": "L4", "count": 8}],
        "models": models,
        "gateway": gateway or {},
        "live": {"request_timeout_s": 10.0, "scrape_interval_s": 0.05, **(live or {})},
        "workload": {"sources": [{"kind": "poisson", "rate": 1, "requests": 1}]},
        **extra,
    }
    return Scenario.model_validate(doc)


@contextmanager
def fake_replicas(*replicas: FakeReplica) -> Iterator[list[ServerThread]]:
    servers = [ServerThread(fake_replica_app(r)).start() for r in replicas]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


@contextmanager
def serve_gateway(
    sc: Scenario,
    upstreams: dict[str, list[tuple[str, str]]],
    *,
    shared_tier: SharedTier | None = None,
    keys: KeyStore | None = None,
) -> Iterator[tuple[Gateway, ServerThread]]:
    """A gateway (build_gateway) with replicas {model: [(name, url)]}, served over real HTTP."""
    gateway = build_gateway(sc, keys=keys or make_keys(), shared_tier=shared_tier)
    for model, items in upstreams.items():
        for name, url in items:
            gateway.add_replica(model, name, url)
    server = ServerThread(gateway.app, lifespan="on").start()
    try:
        yield gateway, server
    finally:
        server.stop()
