"""The scenario's `faults:` injected for real by `odhsim serve` (runtime.faults): one serve subprocess with two tiny
LM replicas, an error rate on one, a slow replica, then a crash, at the scenario's times; a client keeps sending
requests throughout. Bounded: about 150 short requests, faults within 12 s of arming, serve stops by itself
(--duration), every process killed at the end whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from odhsim.scenario.checks import live_refusals
from odhsim.scenario.load import scenario_from_dict
from runtime.replay import replay_async
from tests.runtime.replica_helpers import stop_serve
from tests.runtime.test_replay import FakeTarget, write_scenario

KEYS = "faults-key:team-a:critical"
AUTH = {"Authorization": "Bearer faults-key"}
TINY_LM = {"lm": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 128, "seed": 1}, "max_num_seqs": 8}
ERROR_AT, ERROR_FOR = 1.0, 3.0
SLOW_AT, SLOW_FOR, FACTOR = 5.0, 3.0, 6.0
CRASH_AT = 9.0
SCENARIO: dict[str, Any] = {
    "name": "faults-live",
    "seed": 5,
    "gpu_pool": [{"gpu": "L4", "count": 4}],
    "models": [{"name": "chat", "profile": "llama3.2-1b", "gpu": "L4", "replicas": 2, "live": TINY_LM}],
    "gateway": {
        "router": {"profile": "round-robin"},
        "resilience": {"retry": {"type": "envoy-budget", "params": {"max_retries": 2, "budget_percent": 100}}},
    },
    "faults": [
        {"kind": "error_rate", "model": "chat", "replica": 0, "at_s": ERROR_AT, "duration_s": ERROR_FOR, "share": 0.5},
        {
            "kind": "slow_replica",
            "model": "chat",
            "replica": 1,
            "at_s": SLOW_AT,
            "duration_s": SLOW_FOR,
            "factor": FACTOR,
        },
        {"kind": "replica_crash", "model": "chat", "replica": 0, "at_s": CRASH_AT},
    ],
    "live": {
        "port": 0,
        "request_timeout_s": 20,
        "limits": {"max_prompt_tokens": 64, "max_tokens": 40},
        "restart_backoff": {"base_s": 1, "max_s": 10},
    },
    "workload": {"sources": [{"kind": "poisson", "rate": 1, "requests": 1}], "models": {"chat": 1.0}},
}


class Client(threading.Thread):
    """Two requests at a time, until stopped: each answer's status, JSON body, replica, retries and latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.answers: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def one(self, client: httpx.Client, i: int) -> None:
        body = {"model": "chat", "prompt": f"request {i}", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
        t0 = time.monotonic()
        resp = client.post("/v1/completions", json=body, headers=AUTH)
        with self.lock:
            self.answers.append(
                {
                    "sent": t0,
                    "status": resp.status_code,
                    "json": _json(resp.content),
                    "replica": resp.headers.get("x-odhsim-replica"),
                    "retries": int(resp.headers.get("x-odhsim-retries", "0")),
                    "latency": time.monotonic() - t0,
                }
            )

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                workers = [threading.Thread(target=self.one, args=(client, i + k)) for k in range(2)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                i += 2


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _status(out: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((out / "serve.json").read_text())
    return {}


def _wait(proc: subprocess.Popen[bytes], log: Path, what: str, cond: Any, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"odhsim serve exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _replica_headers(pid: int) -> dict[str, str]:
    """The run's replica secret, read as its user may from the replica's environment."""
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return {"x-odhsim-replica-secret": env[b"ODHSIM_REPLICA_SECRET"].decode()}


def _at(events: list[dict[str, Any]], text: str) -> float:
    """The time (s after arming) of the first fault event whose detail contains `text`."""
    armed = next(e["time_s"] for e in events if e["kind"] == "faults_armed")
    return next(e["time_s"] for e in events if e["kind"] == "fault" and text in e["detail"]) - armed


@contextlib.contextmanager
def serving(tmp_path: Path, doc: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """`odhsim serve` of `doc` in a subprocess (stops by itself after 150 s); (process, out dir, log) once its faults
    are armed. Serve and every replica it started are stopped at the end, whatever happened."""
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(yaml.safe_dump(doc, sort_keys=False))
    out, log = tmp_path / "out", tmp_path / "serve.log"
    exe = Path(sys.executable).with_name("odhsim")
    cmd = [str(exe), "serve", str(scenario), "--port", "0", "--out", str(out), "--device", "cpu", "--duration", "150"]
    env = {**os.environ, "ODHSIM_API_KEYS": KEYS, "ODHSIM_TORCH_THREADS": "1"}
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait(proc, log, "faults armed", lambda: any(e["kind"] == "faults_armed" for e in _events(out)), 120)
        yield proc, out, log
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        pids = {int(m.group(1)) for e in _events(out) for m in [re.search(r"pid (\d+)", e["detail"])] if m}
        stop_serve(proc, pids)


def _check_answered(answers: list[dict[str, Any]]) -> None:
    """Every request answered: 200, or 429 / 5xx with a JSON error body."""
    for a in answers:
        assert a["status"] == 200 or a["status"] == 429 or a["status"] >= 500, a
        if a["status"] != 200:
            assert isinstance(a["json"], dict) and "error" in a["json"], a


@pytest.mark.timeout(240)
def test_crash_error_rate_and_slow_replica_injected_for_real(tmp_path: Path) -> None:
    with serving(tmp_path, SCENARIO) as (proc, out, log):
        client = Client(_status(out)["url"])
        client.start()
        crashed = "chat-v1-0"
        armed_wall = time.monotonic()

        def back_at() -> float | None:
            """When the crashed replica was ready again (s after arming), once it was."""
            ev = _events(out)
            armed = next(e["time_s"] for e in ev if e["kind"] == "faults_armed")
            crash = [e["time_s"] for e in ev if e["kind"] == "crash" and e["replica"] == crashed]
            ready = [e["time_s"] for e in ev if e["kind"] == "state" and e["replica"] == crashed
                     and e["detail"].startswith("testing -> ready")]  # fmt: skip
            return ready[-1] - armed if crash and ready[-1] > crash[0] else None

        def served_after_restart() -> bool:
            t = back_at()
            return t is not None and any(
                a["replica"] == crashed and a["status"] == 200 and a["sent"] - armed_wall > t + 0.2
                for a in list(client.answers)
            )

        try:
            _wait(proc, log, "a 200 from the crashed replica after its restart", served_after_restart, 90)
            slow_one = next(r for m in _status(out)["models"] for r in m["replicas"] if r["name"] == "chat-v1-1")
            headers = _replica_headers(slow_one["pid"])
            slowed_steps = httpx.get(f"{slow_one['url']}/odhsim/faults", headers=headers, timeout=10).json()[
                "slowed_steps"
            ]
        finally:
            client.stop.set()
            client.join(60)
        assert not client.is_alive()

    answers = client.answers
    assert len(answers) >= 20
    _check_answered(answers)
    events = _events(out)
    # the faults at the scenario's times after arming (the event loop may be a little late, never early)
    for text, t in (
        ("error_rate-0: error_rate on chat-v1-0: start (share 0.5 answered 503", ERROR_AT),
        ("error_rate-0: error_rate on chat-v1-0: end", ERROR_AT + ERROR_FOR),
        ("slow_replica-1: slow_replica on chat-v1-1: start (steps x6)", SLOW_AT),
        ("slow_replica-1: slow_replica on chat-v1-1: end", SLOW_AT + SLOW_FOR),
        ("replica_crash-2: replica_crash on chat-v1-0: start (SIGKILL pid", CRASH_AT),
    ):  # fmt: skip
        assert t - 0.01 <= _at(events, text) <= t + 0.5, (text, _at(events, text))
    fault_events = [e for e in events if e["kind"] == "fault"]
    assert {e["replica"] for e in fault_events if "error_rate" in e["detail"]} == {"chat-v1-0"}
    assert {e["replica"] for e in fault_events if "slow_replica" in e["detail"]} == {"chat-v1-1"}
    # the error rate: injected 503s the gateway retried (the client saw retries, not the 503s)
    in_window = [a for a in answers if ERROR_AT + 0.3 < a["sent"] - armed_wall < ERROR_AT + ERROR_FOR - 0.3]
    assert any(a["retries"] > 0 for a in in_window), in_window
    # the crash: a crash event for that replica, its restart (failed -> restarting -> ... -> ready), a 200 after it
    crash = next(e for e in events if e["kind"] == "crash" and e["replica"] == "chat-v1-0")
    assert "signal 9" in crash["detail"]
    after = [e["detail"] for e in events if e["replica"] == "chat-v1-0" and e["kind"] == "state"
             and e["time_s"] >= crash["time_s"]]  # fmt: skip
    assert [d.split(":")[0] for d in after][:4] == [
        "ready -> failed",
        "failed -> restarting",
        "restarting -> loading",
        "loading -> testing",
    ], after
    assert "testing -> ready" in after[4]
    restart = next(e for e in events if e["kind"] == "restart" and e["replica"] == "chat-v1-0")
    assert restart["detail"] == "restart 1 after 1 s back-off" and restart["time_s"] > crash["time_s"]
    # the gateway's reactions are events too, as in the simulator: the injected 503s were retried
    assert any(e["kind"] == "retry" and "HTTP 503 from chat-v1-0" in e["detail"] for e in events)
    # the slow replica: its answers took longer while its steps were stretched
    slow = [a["latency"] for a in answers if a["status"] == 200 and a["replica"] == "chat-v1-1"
            and SLOW_AT + 0.3 < a["sent"] - armed_wall < SLOW_AT + SLOW_FOR - 0.5]  # fmt: skip
    normal = [a["latency"] for a in answers if a["status"] == 200 and a["replica"] == "chat-v1-1"
              and not SLOW_AT - 0.5 < a["sent"] - armed_wall < SLOW_AT + SLOW_FOR + 0.5]  # fmt: skip
    assert len(slow) >= 3 and len(normal) >= 3, (slow, normal)
    assert statistics.median(slow) > 2.0 * statistics.median(normal), (slow, normal)
    assert slowed_steps > 0  # the replica itself says its steps were stretched
    # the records: fault events in events.parquet, as the simulator's
    frame = pd.read_parquet(out / "events.parquet")
    details = frame[frame["kind"] == "fault"]["detail"].tolist()
    assert [d.split(" (")[0] for d in details] == [
        "error_rate-0: error_rate on chat-v1-0: start", "error_rate-0: error_rate on chat-v1-0: end",
        "slow_replica-1: slow_replica on chat-v1-1: start", "slow_replica-1: slow_replica on chat-v1-1: end",
        "replica_crash-2: replica_crash on chat-v1-0: start",
    ]  # fmt: skip


def test_validate_live_refuses_fault_kinds_it_cannot_inject() -> None:
    doc = {**SCENARIO, "faults": [*SCENARIO["faults"], {"kind": "node_failure", "at_s": 1.0, "duration_s": 5.0},
                                  {"kind": "download_failure", "model": "chat", "at_s": 0.0}]}  # fmt: skip
    refused = live_refusals(scenario_from_dict(doc))
    assert len(refused) == 2
    assert refused[0].startswith("faults.3 (node_failure-3): node_failure: the live engine runs on one machine")
    assert refused[1].startswith("faults.4 (download_failure-4): download_failure: live replicas build or read")


class AttemptsTarget(FakeTarget):
    """FakeTarget as the gateway answers under faults: row % 4 == 0 a cache hit (no retries header: 0 attempts),
    1 shed before dispatch (429, no header: 0 attempts), 2 served after 2 retries (3 attempts), 3 failed after one
    retry on the fallback model (502, header 1: 2 attempts; x-odhsim-model names the fallback)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return await super().__call__(request)
        body = json.loads(request.content)
        row = int(body["prompt"][1:].split("]")[0]) if "prompt" in body else int(body["id"])
        kind = row % 4
        if kind == 1:
            err = {"error": {"message": "shed", "type": "shed", "param": None, "code": "admission"}}
            return httpx.Response(429, json=err, headers={"x-odhsim-reason": "admission"})
        if kind == 3:
            err = {"error": {"message": "replica failed", "type": "server_error", "param": None, "code": "upstream"}}
            return httpx.Response(
                502,
                json=err,
                headers={"x-odhsim-reason": "upstream", "x-odhsim-retries": "1", "x-odhsim-model": "backup"},
            )
        resp = await super().__call__(request)
        headers = dict(resp.headers)
        headers.update({"x-odhsim-cache": "hit"} if kind == 0 else {"x-odhsim-retries": "2"})
        return httpx.Response(resp.status_code, content=resp.content, headers=headers)


@pytest.mark.timeout(60)
def test_live_requests_get_attempts_and_the_summary_availability_and_retry_amplification(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    target = httpx.MockTransport(AttemptsTarget())
    run = replay_async(path, "http://gw.test", speed=8.0, transport=target, env={}, max_prompt_tokens=16,
                       max_output_tokens=2, out_dir=tmp_path / "out")  # fmt: skip
    result = asyncio.run(run)
    req = result.requests
    assert len(req) == 30
    assert req["attempts"].tolist() == [(0, 0, 3, 2)[i % 4] for i in range(30)]
    status = req["status"].astype(str).tolist()
    assert status == [("ok", "shed", "ok", "failed")[i % 4] for i in range(30)]
    assert req["fallback"].tolist() == [i % 4 == 3 for i in range(30)]  # an error answer says where it ended
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ok = sum(i % 4 in (0, 2) for i in range(30))  # 16
    assert summary["availability"] == pytest.approx(ok / 30)
    dispatched = [(0, 0, 3, 2)[i % 4] for i in range(30) if i % 4 in (2, 3)]  # 8 x 3 and 7 x 2 attempts
    assert summary["retry_amplification"] == pytest.approx(sum(dispatched) / len(dispatched))


LATENCY_AT, LATENCY_FOR, LATENCY_S = 1.0, 3.0, 0.25
PARTITION_AT, PARTITION_FOR = 5.0, 3.0
CACHE_AT, CACHE_FOR = 1.0, 3.0
CONNECT_S = 2.0  # request_timeout_s 2: the gateway's connect timeout, min(request timeout, 5 s)


@pytest.mark.timeout(240)
def test_network_latency_partition_and_cache_down_injected_for_real(tmp_path: Path) -> None:
    """Latency on one replica's link, then a partition of the other, and the Redis tier (a redis-server of this
    test's own) cut off, at the scenario's times: answers through the slow link are late by both ways, attempts
    into the partition fail as connect failures after the connect timeout and are retried on the other replica,
    and the tier goes down naming the fault and comes back after it."""
    from tests.runtime.test_redis_tier import redis_server

    doc = {
        **SCENARIO,
        "gateway": {**SCENARIO["gateway"], "response_cache": {"type": "tiered", "params": {"shared": True}}},
        "faults": [
            {"kind": "network", "model": "chat", "replica": 0, "at_s": LATENCY_AT, "duration_s": LATENCY_FOR,
             "latency_s": LATENCY_S},
            {"kind": "network", "model": "chat", "replica": 1, "at_s": PARTITION_AT, "duration_s": PARTITION_FOR,
             "partition": True},
            {"kind": "cache_down", "at_s": CACHE_AT, "duration_s": CACHE_FOR},
        ],
    }  # fmt: skip
    with redis_server() as (url, _redis):
        doc["live"] = {**SCENARIO["live"], "request_timeout_s": CONNECT_S, "redis_url": url}
        with serving(tmp_path, doc) as (proc, out, log):
            client = Client(_status(out)["url"])
            client.start()
            armed_wall = time.monotonic()
            try:
                came_back = lambda: any(e["kind"] == "shared_tier_up" for e in _events(out))  # noqa: E731
                _wait(proc, log, "the shared tier back", came_back, 60)
                time.sleep(max(0.0, PARTITION_AT + PARTITION_FOR + 1.0 - (time.monotonic() - armed_wall)))
            finally:
                client.stop.set()
                client.join(60)
    answers = client.answers
    _check_answered(answers)
    assert all(a["status"] == 200 for a in answers), [a for a in answers if a["status"] != 200]
    events = _events(out)
    for text, t in (
        ("network-0: network on chat-v1-0: start (latency 0.25 s + jitter 0 s)", LATENCY_AT),
        ("network-0: network on chat-v1-0: end", LATENCY_AT + LATENCY_FOR),
        ("network-1: network on chat-v1-1: start (partition)", PARTITION_AT),
        ("network-1: network on chat-v1-1: end", PARTITION_AT + PARTITION_FOR),
        ("cache_down-2: cache_down on shared cache tier: start", CACHE_AT),
        ("cache_down-2: cache_down on shared cache tier: end", CACHE_AT + CACHE_FOR),
    ):
        assert t - 0.01 <= _at(events, text) <= t + 0.5, (text, _at(events, text))
    rel = [{**a, "t": a["sent"] - armed_wall} for a in answers]
    # latency: an answer through the slow link waited both ways
    slow = [a for a in rel if a["replica"] == "chat-v1-0" and LATENCY_AT + 0.3 < a["t"] < LATENCY_AT + LATENCY_FOR - 1]
    assert len(slow) >= 2 and all(a["latency"] >= 2 * LATENCY_S for a in slow), slow
    # partition: attempts into it failed after the connect timeout and were retried on the other replica
    window = [a for a in rel if PARTITION_AT + 0.3 < a["t"] < PARTITION_AT + PARTITION_FOR - 0.3]
    retried = [a for a in window if a["retries"] > 0]
    assert retried and all(a["replica"] == "chat-v1-0" and a["latency"] >= CONNECT_S for a in retried), window
    assert not [
        a for a in window if a["replica"] == "chat-v1-1" and a["t"] + a["latency"] < PARTITION_AT + PARTITION_FOR
    ]
    assert any(e["kind"] == "retry" and "connect-failure" in e["detail"] for e in events)
    # cache_down: the tier went down naming the fault, and came back once it ended (after its back-off)
    down = next(e for e in events if e["kind"] == "shared_tier_down")
    assert "connection blocked by fault cache_down-2" in down["detail"]
    armed = next(e["time_s"] for e in events if e["kind"] == "faults_armed")
    assert CACHE_AT - 0.01 <= down["time_s"] - armed <= CACHE_AT + 0.5
    up = next(e for e in events if e["kind"] == "shared_tier_up")
    assert up["time_s"] - armed >= CACHE_AT + CACHE_FOR


@pytest.mark.timeout(30)
def test_stale_metrics_and_a_partition_lose_scrapes_and_the_router_keeps_the_last_numbers() -> None:
    """The gateway's scrape loop of a replica (runtime.gateway.upstream): while its model is stale no scrape is
    sent and the last numbers stay; a partitioned link loses its scrapes too; afterwards scraping resumes."""
    import numpy as np

    from runtime.gateway.upstream import LinkFault, Upstream

    sent: list[str] = []
    waiting = [3]

    def metrics(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(200, text=f'vllm:num_requests_waiting{{model_name="chat"}} {waiting[0]}\n')

    async def run() -> None:
        u = Upstream("chat", "chat-v1-0", "http://replica", 0.0)
        stale: set[str] = set()
        async with httpx.AsyncClient(transport=httpx.MockTransport(metrics)) as client:
            task = asyncio.create_task(u.scrape_forever(client, 0.01, time.monotonic, lambda _: None, stale))
            await asyncio.sleep(0.1)
            assert sent and u.metrics.waiting == 3
            stale.add("chat")
            await asyncio.sleep(0.02)
            n, errors = len(sent), u.scrape_errors
            waiting[0] = 9
            await asyncio.sleep(0.15)
            assert len(sent) == n and u.metrics.waiting == 3 and u.scrape_errors >= errors + 5
            stale.discard("chat")
            u.link = LinkFault("net", 0.0, 0.0, True, np.random.default_rng(0))
            await asyncio.sleep(0.1)
            assert len(sent) == n and u.metrics.waiting == 3
            u.link = None
            await asyncio.sleep(0.1)
            assert len(sent) > n and u.metrics.waiting == 9
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())


@pytest.mark.timeout(240)
def test_deploy_faults_fail_the_starts_inside_their_window_for_real(tmp_path: Path) -> None:
    """A crash makes each model restart inside a deploy fault's window: chat's restart fails its readiness test
    (the new process answers 503), chat2's runs out of memory at load (the process exits); the controller backs
    off and the first start after the window serves."""
    chat2 = {**SCENARIO["models"][0], "name": "chat2", "replicas": 1}
    doc = {
        **SCENARIO,
        "models": [{**SCENARIO["models"][0], "replicas": 1}, chat2],
        "faults": [
            {"kind": "replica_crash", "model": "chat", "replica": 0, "at_s": 1.0},
            {"kind": "replica_crash", "model": "chat2", "replica": 0, "at_s": 1.0},
            {"kind": "readiness_failure", "model": "chat", "at_s": 0.5, "duration_s": 5.0},
            {"kind": "load_oom", "model": "chat2", "at_s": 0.5, "duration_s": 5.0},
            {"kind": "error_rate", "model": "chat2", "replica": 0, "at_s": 0.2, "duration_s": 100.0, "share": 0.01},
        ],
    }

    def ready_again(events: list[dict[str, Any]], name: str) -> bool:
        crash = [e["time_s"] for e in events if e["kind"] == "crash" and e["replica"] == name]
        return bool(crash) and any(
            e["replica"] == name and e["detail"].startswith("testing -> ready") and e["time_s"] > crash[0]
            for e in events
        )

    with serving(tmp_path, doc) as (proc, out, log):
        both = lambda: all(ready_again(_events(out), n) for n in ("chat-v1-0", "chat2-v1-0"))  # noqa: E731
        _wait(proc, log, "both models' replicas back", both, 150)
        url = _status(out)["url"]
        back = next(r for m in _status(out)["models"] for r in m["replicas"] if r["name"] == "chat2-v1-0")
        switch = httpx.get(f"{back['url']}/odhsim/faults", headers=_replica_headers(back["pid"]), timeout=10).json()
        answers = {}
        for model in ("chat", "chat2"):
            body = {"model": model, "prompt": "after", "max_tokens": 4, "temperature": 0}
            answers[model] = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)
    for model, resp in answers.items():
        assert resp.status_code == 200 and resp.headers["x-odhsim-replica"] == f"{model}-v1-0", resp.text
    events = _events(out)
    armed = next(e["time_s"] for e in events if e["kind"] == "faults_armed")
    for name, label, kind, why in (
        ("chat-v1-0", "readiness_failure-2", "readiness_failure", "test completion answered 503: injected fault"),
        ("chat2-v1-0", "load_oom-3", "load_oom", "process exited before it was ready"),
    ):
        mine = [e for e in events if e["replica"] == name]
        failed_starts = [e for e in mine if e["kind"] == "fault" and e["detail"].startswith(f"{label}: {kind} on")]
        assert failed_starts and all(0.5 <= e["time_s"] - armed <= 5.5 for e in failed_starts), failed_starts
        # each start in the window failed, and the controller said why before backing off
        failures = [e["detail"] for e in mine if (e["kind"] == "state" and e["detail"].startswith("loading -> failed"))
                    or e["detail"].startswith("testing -> failed")]  # fmt: skip
        assert len(failures) == len(failed_starts) and all(why in d for d in failures), (failures, failed_starts)
        # the start that served began after the window
        last_start = max(e["time_s"] for e in mine if e["detail"].startswith("restarting -> loading"))
        assert last_start - armed > 5.5
    # an error_rate fault that held across chat2's restart was switched on in its new process before traffic
    assert switch["error"]["share"] == 0.01
    reapplied = [e for e in events if e["kind"] == "fault_reapplied" and e["replica"] == "chat2-v1-0"]
    ready_at = max(e["time_s"] for e in events if e["replica"] == "chat2-v1-0" and e["detail"] == "testing -> ready")
    assert len(reapplied) == 1 and reapplied[0]["time_s"] <= ready_at
    oom_log = (out / "logs" / "chat2-v1-0.log").read_text()
    assert "CUDA out of memory while allocating the KV cache (injected fault load_oom-3: load_oom)" in oom_log
