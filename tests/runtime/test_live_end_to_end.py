"""`odhsim serve` for real: one subprocess (gateway + controllers) and its replica processes, shared by the tests
of this module in file order. Bounded: tiny models, a few dozen requests per test, every test under a timeout,
and every process (serve and replicas) stopped at the end whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from odhsim.results.run_result import load_results
from runtime.replay import replay_async
from tests.runtime.replica_helpers import stop_serve

KEYS = "e2e-key:team-a:critical,e2e-key-b:team-b:high,e2e-key-clf:team-c:low:clf"
AUTH = {"Authorization": "Bearer e2e-key"}
TINY_LM = {"lm": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 128, "seed": 1}, "max_num_seqs": 8}
SCENARIO: dict[str, Any] = {
    "name": "e2e",
    "seed": 9,
    "gpu_pool": [{"gpu": "L4", "count": 8}],
    "models": [
        {"name": "chat", "profile": "llama3.2-1b", "gpu": "L4", "replicas": 2, "live": TINY_LM},
        {
            "name": "clf",
            "kind": "fixed",
            "gpu": "L4",
            "replicas": 1,
            "concurrency": 8,
            "drain_timeout_s": 20,
            "service_time": {"mean_s": 0.005},
            "live": {"mlp": {"input_dim": 8, "hidden": [16], "classes": 3}, "max_batch_delay_ms": 2},
            "autoscaling": {
                "type": "kpa",
                "interval_s": 0.5,
                "metrics_interval_s": 0.25,
                "params": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "metric": "rps",
                    "target": 4,
                    "stable_window_s": 6,
                    "tick_s": 0.25,
                },
            },
        },
        {"name": "big", "profile": "llama2-70b", "gpu": "L4", "replicas": 1, "live": TINY_LM},
    ],
    "gateway": {"resilience": {"retry": {"type": "envoy-budget", "params": {"max_retries": 2, "budget_percent": 100}}}},
    "live": {
        "port": 0,
        "request_timeout_s": 20,
        "limits": {"max_prompt_tokens": 64, "max_tokens": 110},
        "restart_backoff": {"base_s": 1, "max_s": 10},  # the SIGKILLed replica restarts after 1 s, not 10
    },
    "workload": {
        "sources": [
            {
                "kind": "poisson",
                "rate": 8,
                "requests": 24,
                "prompt_tokens": {"dist": "fixed", "value": 40},
                "output_tokens": {"dist": "fixed", "value": 6},
            }
        ],
        "models": {"chat": 0.75, "clf": 0.25},
        "tenants": {"team-a": 0.5, "team-b": 0.5},
    },
}


class Live:
    """The running `odhsim serve` subprocess and what it writes (serve.json, events.jsonl)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, log: Path) -> None:
        self.proc = proc
        self.out = out
        self.log = log
        self.url = ""

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.out / "serve.json").read_text())
        return {}

    def events(self) -> list[dict[str, Any]]:
        path = self.out / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def replicas(self, model: str) -> dict[str, dict[str, Any]]:
        for m in self.status().get("models", []):
            if m["model"] == model:
                return {r["name"]: r for r in m["replicas"]}
        return {}

    def wait(self, what: str, cond: Any, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while not cond():
            if self.proc.poll() is not None:
                pytest.fail(f"odhsim serve exited ({self.proc.returncode}) waiting for {what}:\n{self.log.read_text()}")
            if time.monotonic() > end:
                pytest.fail(f"timed out waiting for {what}; events: {self.events()[-15:]}")
            time.sleep(0.1)

    def pids(self) -> set[int]:
        return {int(m.group(1)) for e in self.events() for m in [re.search(r"pid (\d+)", e["detail"])] if m}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of a dead parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


@pytest.mark.timeout(60)
def test_serve_input_errors_are_clear_without_traceback(tmp_path: Path) -> None:
    """Exit 2 with the reason, before any process starts: no keys, a busy port, a bad scenario or device."""
    import socket

    from typer.testing import CliRunner

    from odhsim.cli import app

    runner = CliRunner()
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    no_keys = runner.invoke(app, ["serve", str(scenario), "--port", "0"], env={"ODHSIM_API_KEYS": None})
    assert no_keys.exit_code == 2 and "no API keys" in no_keys.output and "Traceback" not in no_keys.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = runner.invoke(app, ["serve", str(scenario), "--port", str(port)], env={"ODHSIM_API_KEYS": KEYS})
    assert taken.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.output, taken.output
    device = runner.invoke(app, ["serve", str(scenario), "--device", "tpu"], env={"ODHSIM_API_KEYS": KEYS})
    assert device.exit_code == 2 and "--device must be auto, cpu or cuda" in device.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SCENARIO, "live": {"port": "eighty"}}))
    invalid = runner.invoke(app, ["serve", str(bad)], env={"ODHSIM_API_KEYS": KEYS})
    assert invalid.exit_code == 2 and "live.port" in invalid.output and "Traceback" not in invalid.output


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    scenario = root / "e2e.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    out, log = root / "out", root / "serve.log"
    exe = Path(sys.executable).with_name("odhsim")
    cmd = [str(exe), "serve", str(scenario), "--port", "0", "--out", str(out), "--device", "cpu", "--duration", "900"]
    env = {**os.environ, "ODHSIM_API_KEYS": KEYS, "ODHSIM_TORCH_THREADS": "1"}
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = Live(proc, out, log)
    try:
        handle.wait("the gateway's URL", lambda: bool(handle.status().get("url")), 60)
        handle.url = handle.status()["url"]
        yield handle
    finally:
        pids = handle.pids()
        stop_serve(proc, pids)


def _replica_headers(pid: int) -> dict[str, str]:
    """The run's replica secret, read as its user may from the replica's environment: replicas answer nothing
    without it (runtime.replica_secret)."""
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return {"x-odhsim-replica-secret": env[b"ODHSIM_REPLICA_SECRET"].decode()}


def _ready(live: Live, model: str, n: int) -> bool:
    return sum(r["state"] == "ready" for r in live.replicas(model).values()) == n


@pytest.mark.timeout(180)
def test_deploy_flow_events_in_order_and_a_real_inference_before_traffic(live: Live) -> None:
    live.wait("chat and clf ready", lambda: _ready(live, "chat", 2) and _ready(live, "clf", 1), 150)
    events = live.events()
    for name in ("chat-v1-0", "chat-v1-1", "clf-v1-0"):
        mine = [e for e in events if e["replica"] == name]
        moves = [e["detail"].split(":")[0] for e in mine if e["kind"] == "state"]
        assert moves == ["-> pending", "pending -> loading", "loading -> testing", "testing -> ready"]
        kinds = [e["kind"] for e in mine]
        assert kinds.index("test") == len(kinds) - 2  # the test passed, then ready
        assert next(e["detail"] for e in mine if e["kind"] == "test").startswith("passed: a ")
    deploy = [e for e in events if e["kind"] == "deploy"]
    assert [e["model"] for e in deploy] == ["chat", "clf", "big"]
    # No traffic yet, but each LM replica has served exactly one request: its readiness test.
    for r in live.replicas("chat").values():
        text = httpx.get(f"{r['url']}/metrics", timeout=5, headers=_replica_headers(r["pid"])).text
        done = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")
        )
        assert done == 1.0, text
        assert r["tests_passed"] == 1


@pytest.mark.timeout(60)
def test_rejected_deployment_is_an_event_with_its_reason(live: Live) -> None:
    deploy = {e["model"]: e["detail"] for e in live.events() if e["kind"] == "deploy"}
    assert deploy["chat"].startswith("approved") and deploy["clf"].startswith("approved")
    assert deploy["big"].startswith("rejected: ") and "does not fit" in deploy["big"] and "raise tp" in deploy["big"]
    big = next(m for m in live.status()["models"] if m["model"] == "big")
    assert big["rejected"] and big["replicas"] == []


@pytest.mark.timeout(60)
def test_requests_to_a_rejected_model_fail_with_the_reason(live: Live) -> None:
    body = {"model": "big", "prompt": "hello", "max_tokens": 2}
    resp = httpx.post(f"{live.url}/v1/completions", json=body, headers=AUTH, timeout=30)
    assert resp.status_code >= 500
    assert "does not fit" in resp.json()["error"]["message"]


@pytest.mark.timeout(90)
def test_official_clients_through_the_real_gateway_and_bad_input_answers(live: Live) -> None:
    """openai and tritonclient (KServe v2) against `odhsim serve`; greedy output is the same on every replica and
    every call; each bad input gets its status and a JSON error while the stack keeps serving."""
    import numpy as np
    import openai
    import tritonclient.http as triton

    live.wait("chat and clf ready", lambda: _ready(live, "chat", 2) and _ready(live, "clf", 1), 60)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="e2e-key", max_retries=0, timeout=20.0)
    assert {m.id for m in client.models.list().data} >= {"chat", "clf"}
    texts = set()
    for _ in range(3):  # no response cache in this scenario: every call generates
        done = client.completions.create(
            model="chat", prompt="The gateway routes", max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
        )
        texts.add(done.choices[0].text)
        assert done.usage is not None and done.usage.prompt_tokens == len("The gateway routes") + 1
        assert done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length"
    for replica in live.replicas("chat").values():  # prefix affinity pins one prompt to one replica: ask each
        direct = openai.OpenAI(
            base_url=replica["url"] + "/v1", api_key="unused", max_retries=0, timeout=20.0,
            default_headers=_replica_headers(replica["pid"]),
        )  # fmt: skip
        again = direct.completions.create(
            model="chat", prompt="The gateway routes", max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
        )
        texts.add(again.choices[0].text)
    assert len(texts) == 1  # same weights seed, greedy: the same answer on every replica and every call
    streamed = client.completions.create(
        model="chat", prompt="The gateway routes", max_tokens=12, temperature=0.0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == texts.pop()

    host = live.url.removeprefix("http://")
    v2 = triton.InferenceServerClient(url=host)
    headers = {"Authorization": "Bearer e2e-key"}
    assert v2.is_server_live() and v2.is_model_ready("clf", headers=headers)
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    inp = triton.InferInput("INPUT__0", [3, 8], "FP32")
    inp.set_data_from_numpy(rows)
    result = v2.infer("clf", [inp], headers=headers)
    probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (labels == probs.argmax(axis=1)).all()
    v2.close()

    def post(path: str, body: Any, key: str | None = "e2e-key", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, bytes):
            return httpx.post(live.url + path, content=body, headers={**headers, "content-type": "application/json"})
        return httpx.post(live.url + path, json=body, headers=headers, timeout=20, **kw)

    def v2_body(shape: list[int], datatype: str) -> dict[str, Any]:
        return {"inputs": [{"name": "INPUT__0", "shape": shape, "datatype": datatype, "data": [0] * shape[1]}]}

    ok = {"model": "chat", "prompt": "hi", "max_tokens": 2}
    lm_v2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    cases = [
        (post("/v1/completions", b"{not json"), 400),
        (post("/v1/completions", {"model": "chat"}), 400),  # no prompt
        (post("/v1/completions", {**ok, "max_tokens": "many"}), 400),
        (post("/v1/completions", {**ok, "max_tokens": -1}), 400),
        (post("/v1/completions", {**ok, "max_tokens": 10**9}), 400),
        (post("/v1/completions", {**ok, "prompt": "x" * 100}), 400),  # over max_prompt_tokens (64)
        (post("/v1/completions", {**ok, "prompt": "x" * 2_000_000}), 413),
        (post("/v1/completions", {**ok, "model": "nope"}), 404),
        (post("/v1/completions", ok, key=None), 401),
        (post("/v1/completions", ok, key="wrong"), 401),
        (post("/v1/completions", ok, key="e2e-key-clf"), 403),  # this key may use clf only
        (post("/v2/models/clf/infer", v2_body([1, 5], "FP32")), 400),  # clf takes 8 features
        (post("/v2/models/clf/infer", v2_body([1, 8], "INT8")), 400),
        # issue 14: poison input fails only itself, with a 400 naming the field
        (post("/v1/completions", {**ok, "temperature": -0.1}), 400),
        (post("/v1/completions", {**ok, "top_p": 0}), 400),
        (post("/v1/completions", {**ok, "seed": 2**64}), 400),
        (post("/v1/completions", {**ok, "n": 2}), 400),
        (post("/v1/completions", {**ok, "best_of": 2}), 400),
        (post("/v1/completions", {**ok, "logprobs": 2}), 400),
        (post("/v1/completions", {**ok, "echo": True}), 400),
        (post("/v1/completions", b'{"model": "chat", "prompt": "\\ud800", "max_tokens": 2}'), 400),
        (post("/v1/completions", b'{"model": "chat", "prompt": "x", "stop": ["\\udfff"]}'), 400),
        (post("/v2/models/chat/infer", {**lm_v2, "parameters": {"temperature": -1}}), 400),
        (post("/v2/models/chat/infer", b'{"inputs": [{"name": "text_input", "datatype": "BYTES", '
              b'"shape": [1], "data": ["\\ud800"]}]}'), 400),
    ]  # fmt: skip
    for i, (resp, status) in enumerate(cases):
        assert resp.status_code == status, (i, resp.status_code, resp.text[:200])
        assert "error" in resp.json(), (i, resp.text[:200])
    for tiny in ({**ok, "temperature": 1e-320}, {**lm_v2, "parameters": {"temperature": 1e-320}}):
        path = "/v1/completions" if "model" in tiny else "/v2/models/chat/infer"
        assert post(path, tiny).status_code == 200  # a poison temperature is greedy, as in vLLM, not a NaN batch
    assert 'odhsim_gateway_upstream_failures_total{model="chat"' not in httpx.get(f"{live.url}/metrics").text
    assert post("/v1/completions", ok).status_code == 200  # still serving


@pytest.mark.timeout(120)
def test_replay_writes_the_simulators_schema_with_zero_errors(live: Live, tmp_path: Path) -> None:
    scenario = live.out.parent / "e2e.yaml"
    out = tmp_path / "replay"
    result = asyncio.run(replay_async(scenario, live.url, out_dir=out, env={"ODHSIM_API_KEYS": KEYS}))
    summary = result.summary
    assert summary["requests"] == 24 and summary["completed"] == 24, result.requests["reason"].astype(str).tolist()
    loaded = load_results(out)
    req = loaded["requests"]
    for col in ("model", "priority", "tenant", "arrival_s", "prompt_tokens", "output_tokens", "start_s",
                "first_token_s", "finish_s", "status", "reason", "replica", "retries", "cache_hit", "fallback",
                "cached_tokens", "run_id", "seed", "scenario"):  # fmt: skip
        assert col in req.columns
    assert set(req["replica"].astype(str)) <= {"chat-v1-0", "chat-v1-1", "clf-v1-0", "clf-v1-1"}
    chat = req[req["model"] == "chat"]
    assert (chat["first_token_s"] > chat["arrival_s"]).all() and (chat["finish_s"] >= chat["first_token_s"]).all()
    assert (chat["prompt_tokens"] == 40).all() and (chat["output_tokens"] == 6).all()


async def _completion(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, str, str]:
    """One non-streaming completion: (status, replica, reason); the reason of an error comes with it."""
    body = {"model": "chat", "prompt": f"crash test {i:03d}", "max_tokens": max_tokens, "ignore_eos": True}
    try:
        r = await client.post("/v1/completions", json=body, headers=AUTH)
    except httpx.HTTPError as err:
        return 0, "", f"client error {type(err).__name__}"
    reason = "" if r.status_code == 200 else r.json()["error"]["message"]
    return r.status_code, r.headers.get("x-odhsim-replica", ""), reason


async def _completions(url: str, n: int, max_tokens: int) -> list[tuple[int, str, str]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(_completion(client, i, max_tokens) for i in range(n)))


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        if sample in (name, f"{name}_total") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


@pytest.mark.timeout(180)
def test_sigkill_under_load_then_restart_retest_and_traffic_returns(live: Live) -> None:
    live.wait("chat ready", lambda: _ready(live, "chat", 2), 60)
    victim = live.replicas("chat")["chat-v1-1"]
    tests_before = victim["tests_passed"]
    retried_before = _metric(httpx.get(f"{live.url}/metrics").text, "odhsim_gateway_upstream_failures", model="chat")

    async def load_and_kill() -> tuple[list[tuple[int, str, str]], float]:
        """40 requests, two every 50 ms; SIGKILL the victim as soon as it is generating for one of them."""

        async def killer(probe: httpx.AsyncClient) -> float:
            while True:
                metrics = (await probe.get(f"{victim['url']}/metrics")).text
                running = _metric(metrics, "vllm:num_requests_running")
                if running:
                    os.kill(victim["pid"], signal.SIGKILL)
                    return running
                await asyncio.sleep(0.002)

        probe_headers = _replica_headers(victim["pid"])
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=60) as client,
            httpx.AsyncClient(timeout=5, headers=probe_headers) as probe,
        ):
            kill = asyncio.create_task(killer(probe))
            tasks = []
            for i in range(40):
                tasks.append(asyncio.create_task(_completion(client, i, 100)))  # ~100 decode steps in flight
                if i % 2:
                    await asyncio.sleep(0.05)
            results = list(await asyncio.gather(*tasks))
            try:
                running = await asyncio.wait_for(kill, 5)
            except TimeoutError:
                os.kill(victim["pid"], signal.SIGKILL)
                running = 0.0
            return results, running

    results, running_at_kill = asyncio.run(load_and_kill())
    assert running_at_kill >= 1  # it died with requests in flight
    assert len(results) == 40
    for status, _replica, reason in results:  # answered once, or failed with a reason
        assert status == 200 or (status >= 400 and reason), (status, reason)
    ok = sum(s == 200 for s, _, _ in results)
    others = [r for r in results if r[0] != 200]
    print(f"SIGKILL with {running_at_kill:g} running at the victim: {ok}/40 ok, others: {others}")
    assert ok >= 30  # retries move most to the survivor
    failures = _metric(httpx.get(f"{live.url}/metrics").text, "odhsim_gateway_upstream_failures", model="chat")
    assert failures > retried_before  # the gateway saw the dead replica fail those attempts

    live.wait("the crash", lambda: any(e["kind"] == "crash" and e["replica"] == "chat-v1-1" for e in live.events()), 30)
    live.wait("chat-v1-1 restarted", lambda: live.replicas("chat")["chat-v1-1"]["tests_passed"] > tests_before, 90)
    mine = [e for e in live.events() if e["replica"] == "chat-v1-1"]
    crash_at = next(i for i, e in enumerate(mine) if e["kind"] == "crash")
    after = [e["detail"].split(":")[0] for e in mine[crash_at:] if e["kind"] == "state"]
    assert after[:5] == [
        "ready -> failed", "failed -> restarting", "restarting -> loading", "loading -> testing", "testing -> ready",
    ]  # fmt: skip
    assert "killed by signal 9" in mine[crash_at]["detail"]
    restarting = next(e for e in mine[crash_at:] if e["detail"].startswith("failed -> restarting"))
    assert restarting["detail"].endswith("restart 1 after 1 s (CrashLoopBackOff)")  # the scenario's back-off
    loading = next(e for e in mine[crash_at:] if e["detail"].startswith("restarting -> loading"))
    assert 0.99 <= loading["time_s"] - restarting["time_s"] < 5.0
    assert any(e["kind"] == "test" for e in mine[crash_at:])  # re-tested before traffic
    restarted = live.replicas("chat")["chat-v1-1"]
    assert restarted["pid"] != victim["pid"] and restarted["restarts"] == 1

    served: set[str] = set()
    for _ in range(10):  # traffic returns to it
        served |= {rep for s, rep, _ in asyncio.run(_completions(live.url, 8, 4)) if s == 200}
        if "chat-v1-1" in served:
            break
    assert "chat-v1-1" in served


@pytest.mark.timeout(180)
def test_autoscaler_scales_up_under_load_and_drains_back_without_dropping(live: Live) -> None:
    live.wait("clf at one replica", lambda: _ready(live, "clf", 1) and len(live.replicas("clf")) == 1, 60)

    async def infer_at(rate: float, seconds: float, until: Any = None) -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:

            async def one(i: int) -> int:
                body = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 8], "data": [i % 7] * 8}]}
                try:
                    r = await client.post("/v2/models/clf/infer", json=body, headers=AUTH)
                except httpx.HTTPError:
                    return 0
                return r.status_code

            tasks, t0, i = [], time.monotonic(), 0
            while time.monotonic() - t0 < seconds and not (until is not None and until()):
                tasks.append(asyncio.create_task(one(i)))
                i += 1
                await asyncio.sleep(1.0 / rate)
            return list(await asyncio.gather(*tasks))

    up = asyncio.run(infer_at(30.0, 40.0, until=lambda: _ready(live, "clf", 2)))
    assert _ready(live, "clf", 2), live.events()[-10:]
    scale = [e["detail"] for e in live.events() if e["kind"] == "scale" and e["model"] == "clf"]
    assert scale and scale[0].startswith("1 -> 2")
    # a trickle while the autoscaler brings it back to 1: the newest replica drains, nothing is dropped
    gone = lambda: any(e["replica"] == "clf-v1-1" and "-> gone" in e["detail"] for e in live.events())  # noqa: E731
    trickle = asyncio.run(infer_at(2.0, 60.0, until=gone))
    assert gone(), live.events()[-10:]
    assert all(s == 200 for s in up + trickle), sorted(set(up + trickle))
    mine = [e["detail"] for e in live.events() if e["replica"] == "clf-v1-1" and e["kind"] == "state"]
    assert mine[-2].startswith("ready -> draining: scaled down") and mine[-1] == "draining -> gone: drained"
    assert _ready(live, "clf", 1)


@pytest.mark.timeout(120)
def test_shutdown_stops_every_process_and_writes_the_records(live: Live) -> None:
    pids = live.pids()
    assert len(pids) >= 4
    live.proc.send_signal(signal.SIGTERM)
    assert live.proc.wait(90) == 0, live.log.read_text()
    assert not [p for p in pids if _alive(p)]
    events = pd.read_parquet(live.out / "events.parquet")
    assert list(events.columns[:3]) == ["run_id", "seed", "scenario"]
    assert {"time_s", "kind", "model", "replica", "detail"} <= set(events.columns)
    states = pd.read_parquet(live.out / "replicas.parquet")
    last = states.groupby("replica", observed=True)["state"].last()
    assert set(last) == {"gone"}
    # every replica that served (each ran its readiness inference) left its engine steps, the killed one too
    steps = pd.read_parquet(live.out / "steps.parquet")
    assert list(steps.columns[:3]) == ["run_id", "seed", "scenario"] and (steps["duration_s"] > 0).all()
    assert set(steps["replica"]) == set(states.loc[states["state"] == "ready", "replica"])
    assert set(steps.loc[steps["kind"] == "fixed", "model"]) == {"clf"} and steps["decode_seqs"].sum() > 0
    assert "stopped:" in live.log.read_text()
