"""Poison input fails only itself (issue 14, part 1), live: two real replica processes behind a real gateway over
HTTP on 127.0.0.1, with a breaker, outlier detection and retries that would show any failure counted against a
replica.

The replicas' weights make byte 0x07 a poison: its embedding is NaN, so a prompt holding it yields non-finite logits
for that sequence only (what a poison temperature did before it was validated away at the edge); its logit bias is
-1e4, so no sequence ever generates it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from odhsim.scenario.live import TinyLmSpec
from runtime.gateway.core import Gateway
from runtime.models.tiny_lm import TinyLm
from runtime.processes import ReplicaProcess
from tests.runtime.gateway_fakes import ServerThread, auth, scenario, serve_gateway
from tests.runtime.replica_helpers import lm_config, running_replicas

POISON = "\x07"
LM = TinyLmSpec(d_model=32, n_layers=2, n_heads=4, max_seq_len=1100, seed=7)
RESILIENCE = {
    "breaker": {"type": "consecutive-failures", "params": {"failure_threshold": 2, "cooldown_s": 30}},
    "outlier_detection": {"type": "envoy", "params": {"consecutive_5xx": 1, "max_ejection_percent": 100}},
    "retry": {"type": "envoy-budget", "params": {"max_retries": 2, "base_interval_s": 0.001}},
}
LONG = {"model": "chat", "prompt": "a long healthy stream", "max_tokens": 1000, "ignore_eos": True, "seed": 1}


@dataclass
class Stack:
    gateway: Gateway
    server: ServerThread
    replicas: dict[str, ReplicaProcess]

    @property
    def url(self) -> str:
        return self.server.url

    def count(self, name: str, **labels: Any) -> float:
        return self.gateway.metrics.value(name, labels)

    def assert_replicas_healthy(self) -> None:
        """Nothing counted against any replica: no upstream failure, no retry, breaker closed, none ejected."""
        metrics = httpx.get(f"{self.url}/metrics", timeout=10).text
        assert 'odhsim_gateway_breaker_open{model="chat"} 0.0' in metrics
        assert 'odhsim_gateway_replicas_ejected{model="chat"} 0.0' in metrics
        assert "odhsim_gateway_upstream_failures_total{" not in metrics, metrics
        assert self.count("odhsim_gateway_retries_total", model="chat") == 0
        healthy = httpx.post(
            f"{self.url}/v1/completions",
            json={"model": "chat", "prompt": "still fine", "max_tokens": 3},
            headers=auth(),
            timeout=20,
        )
        assert healthy.status_code == 200, healthy.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("poison")
    model = TinyLm.build(LM)
    with torch.no_grad():
        model.tok_emb.weight[ord(POISON)] = float("nan")
        model.head.bias[ord(POISON)] = -1e4  # never generated: only a prompt holding it is poisoned
    torch.save(model.state_dict(), root / "poison.pt")
    spec = LM.model_copy(update={"weights": str(root / "poison.pt")})
    cfg = lm_config("chat", spec, max_num_seqs=8)
    sc = scenario({"router": {"profile": "round-robin"}, "resilience": RESILIENCE})
    with running_replicas(("r0", cfg), ("r1", cfg)) as procs:
        ups = {"chat": [(name, p.url) for name, p in procs.items()]}
        with serve_gateway(sc, ups) as (gateway, server):
            yield Stack(gateway, server, procs)


async def _stream(client: httpx.AsyncClient, body: dict[str, Any], started: asyncio.Event | None = None) -> dict:
    """A streamed completion: its replica, data events (parsed) and the time its last byte arrived."""
    events: list[Any] = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}, headers=auth()) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
                if started is not None:
                    started.set()
    return {"replica": r.headers["x-odhsim-replica"], "events": events, "ended": time.monotonic()}


def _text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["text"] for e in events if isinstance(e, dict) and "choices" in e)


def _assert_complete(result: dict, max_tokens: int) -> None:
    events = result["events"]
    assert events[-1] == "[DONE]", events[-3:]
    assert not [e for e in events if isinstance(e, dict) and "error" in e], events[-3:]
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "length" and last["usage"]["completion_tokens"] == max_tokens


async def _beside_long_streams(stack: Stack, poison: Any) -> tuple[list[dict], list[Any], float]:
    """Two long streams (one per replica, round-robin), then `poison(client)` while both are generating; returns
    the long streams' results, the poison's results, and when the poison was answered."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        started = [asyncio.Event(), asyncio.Event()]
        longs = [asyncio.create_task(_stream(client, LONG, started[i])) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
        poisoned = await poison(client)
        answered = time.monotonic()
        return list(await asyncio.gather(*longs)), poisoned, answered


@pytest.mark.timeout(120)
def test_poison_temperature_is_greedy_and_the_batch_and_replicas_stay_healthy(stack: Stack) -> None:
    """temperature 1e-320 (v1 and v2 `parameters.temperature`) used to make NaN and abort the whole batch, then
    eject every replica and open the breaker. Now it means greedy, as vLLM reads it, beside two running streams."""
    greedy = {"model": "chat", "prompt": "poison?", "max_tokens": 8, "ignore_eos": True, "temperature": 0.0}
    want = httpx.post(f"{stack.url}/v1/completions", json=greedy, headers=auth(), timeout=20).json()
    v2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["poison?"]}]}

    async def poison(client: httpx.AsyncClient) -> list[httpx.Response]:
        tiny = {**greedy, "temperature": 1e-320}
        v2_tiny = {**v2, "parameters": {"max_tokens": 8, "ignore_eos": True, "temperature": 1e-320}}
        sends = [client.post("/v1/completions", json=tiny, headers=auth()) for _ in range(2)]
        sends += [client.post("/v2/models/chat/infer", json=v2_tiny, headers=auth()) for _ in range(2)]
        return list(await asyncio.gather(*sends))

    longs, answers, answered = asyncio.run(_beside_long_streams(stack, poison))
    for r in answers:
        assert r.status_code == 200, r.text
    assert {r.headers["x-odhsim-replica"] for r in answers} == {"r0", "r1"}  # both replicas saw the poison
    assert [r.json()["choices"][0]["text"] for r in answers[:2]] == [want["choices"][0]["text"]] * 2
    assert [r.json()["outputs"][0]["data"][0] for r in answers[2:]] == [want["choices"][0]["text"]] * 2
    assert {lg["replica"] for lg in longs} == {"r0", "r1"}
    for lg in longs:
        assert answered < lg["ended"]  # the poison was served while both long streams were generating
        _assert_complete(lg, LONG["max_tokens"])
    stack.assert_replicas_healthy()


@pytest.mark.timeout(120)
def test_a_sequence_with_non_finite_logits_fails_alone_and_is_not_held_against_its_replica(stack: Stack) -> None:
    """A prompt whose own logits are NaN fails that request only: 422 `sequence_failed` (v1 and v2), or in a stream
    an error event then [DONE]; never retried, not counted against the replica; the batch beside it completes."""
    poison_body = {"model": "chat", "prompt": f"poison {POISON} here", "max_tokens": 8, "temperature": 1.0}
    v2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [f"v2 {POISON}"]}]}

    async def poison(client: httpx.AsyncClient) -> list[Any]:
        sends: list[Any] = [client.post("/v1/completions", json=poison_body, headers=auth()) for _ in range(2)]
        sends += [client.post("/v2/models/chat/infer", json=v2, headers=auth())]
        sends += [_stream(client, poison_body)]
        return list(await asyncio.gather(*sends))

    longs, (a, b, v2_answer, streamed), answered = asyncio.run(_beside_long_streams(stack, poison))
    for lg in longs:
        assert answered < lg["ended"]
        _assert_complete(lg, LONG["max_tokens"])
    for r in (a, b):
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "sequence_failed" and err["type"] == "invalid_request_error"
        assert "error id err-" in err["message"] and "probability" not in err["message"]
        assert r.headers["x-odhsim-retries"] == "0"
    assert {a.headers["x-odhsim-replica"], b.headers["x-odhsim-replica"]} == {"r0", "r1"}
    assert v2_answer.status_code == 422 and "error id err-" in v2_answer.json()["error"]
    errors = [e["error"] for e in streamed["events"] if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["code"] == "sequence_failed" and "error id err-" in errors[0]["message"]
    assert streamed["events"][-1] == "[DONE]"
    assert stack.count("odhsim_gateway_requests_total", model="chat", status=422, reason="sequence_failed") == 4
    stack.assert_replicas_healthy()
    for proc in stack.replicas.values():  # the detail went to the replica's log, under an error id
        log = proc.log_tail(400)
        assert "non-finite logits" in log and "error id err-" in log


BAD_SAMPLING: list[tuple[str, dict[str, Any], str]] = [
    ("temperature negative", {"temperature": -0.5}, "temperature"),
    ("temperature over 2", {"temperature": 2.5}, "temperature"),
    ("temperature inf", {"temperature": float("inf")}, "temperature"),
    ("temperature bool", {"temperature": True}, "temperature"),
    ("top_p zero", {"top_p": 0.0}, "top_p"),
    ("top_p over 1", {"top_p": 1.5}, "top_p"),
    ("top_p bool", {"top_p": True}, "top_p"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens bool", {"max_tokens": True}, "max_tokens"),
    ("max_tokens float", {"max_tokens": 4.0}, "max_tokens"),
    ("seed over int64", {"seed": 2**63}, "seed"),
    ("seed bool", {"seed": False}, "seed"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("empty stop", {"stop": [""]}, "stop"),
    ("ignore_eos number", {"ignore_eos": 1}, "ignore_eos"),
    ("n", {"n": 2}, "n"),
    ("best_of", {"best_of": 3}, "best_of"),
    ("logprobs", {"logprobs": 1}, "logprobs"),
    ("logprobs zero", {"logprobs": 0}, "logprobs"),
    ("echo", {"echo": True}, "echo"),
    ("suffix", {"suffix": "end"}, "suffix"),
    ("presence_penalty", {"presence_penalty": 0.5}, "presence_penalty"),
    ("logit_bias", {"logit_bias": {"65": 10}}, "logit_bias"),
]


@pytest.mark.timeout(120)
def test_sampling_fields_are_validated_alike_at_the_gateway_and_the_replica(stack: Stack) -> None:
    """Each bad sampling field, and each OpenAI field the runtime does not implement, is a 400 naming it, at the
    gateway (nothing reaches a replica) and at a replica asked directly; their neutral values are accepted."""
    base = {"model": "chat", "prompt": "x", "max_tokens": 2}
    replica = stack.replicas["r0"].url
    for name, extra, param in BAD_SAMPLING:
        for url, headers in ((stack.url, auth()), (replica, {})):
            content = json.dumps({**base, **extra}).replace("Infinity", "1e309")  # JSON's spelling of an overflow
            h = {**headers, "content-type": "application/json"}
            r = httpx.post(f"{url}/v1/completions", content=content, headers=h, timeout=20)
            assert r.status_code == 400, (name, url, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error", (name, url, err)
    neutral = {"n": 1, "best_of": 1, "logprobs": None, "echo": False, "presence_penalty": 0, "logit_bias": {}}
    for url, headers in ((stack.url, auth()), (replica, {})):
        ok = httpx.post(f"{url}/v1/completions", json={**base, **neutral}, headers=headers, timeout=20)
        assert ok.status_code == 200, ok.text
    v2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    for params in ({"temperature": -1}, {"top_p": 0}, {"seed": 2**64}, {"max_tokens": True}, {"stop": [""]}):
        for url, headers in ((stack.url, auth()), (replica, {})):
            r = httpx.post(f"{url}/v2/models/chat/infer", json={**v2, "parameters": params}, headers=headers)
            assert r.status_code == 400 and r.json()["error"].startswith("parameters."), (params, url, r.text)
    assert stack.count("odhsim_gateway_requests_total", model="chat", status=400, reason="bad_request") >= len(
        BAD_SAMPLING
    )


LONE = "\\ud800"  # as JSON spells it: a high surrogate half with no low half


@pytest.mark.timeout(120)
def test_lone_surrogates_are_400_naming_the_field_at_the_gateway_and_the_replica(stack: Stack) -> None:
    cases = [
        ("/v1/completions", f'{{"model": "chat", "prompt": "a{LONE}b", "max_tokens": 2}}', "prompt"),
        ("/v1/completions", f'{{"model": "chat", "prompt": ["{LONE}"], "max_tokens": 2}}', "prompt"),
        ("/v1/completions", f'{{"model": "chat", "prompt": "x", "stop": ["ok", "{LONE}"]}}', "stop"),
        ("/v1/completions", f'{{"model": "chat", "prompt": "x", "stop": "{LONE}"}}', "stop"),
        ("/v1/completions", f'{{"model": "chat{LONE}", "prompt": "x"}}', "model"),
        ("/v1/completions", f'{{"model": "chat", "prompt": "x", "user": "{LONE}"}}', "user"),
        (
            "/v2/models/chat/infer",
            f'{{"inputs": [{{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["{LONE}"]}}]}}',
            "inputs",
        ),
        (
            "/v2/models/chat/infer",
            f'{{"id": "{LONE}", "inputs": [{{"name": "text_input", "datatype": "BYTES", "shape": [1], '
            '"data": ["x"]}]}',
            "id",
        ),
    ]
    replica = stack.replicas["r1"].url
    for path, body, field in cases:
        for url, headers in ((stack.url, auth()), (replica, {})):
            r = httpx.post(url + path, content=body, headers={**headers, "content-type": "application/json"})
            assert r.status_code == 400, (path, body, url, r.text)
            err = r.json()["error"]
            message = err if isinstance(err, str) else err["message"]
            assert message.startswith(field) and "lone UTF-16 surrogate" in message, (body, url, message)
            if path.startswith("/v1"):
                assert err["param"] == field
    pair = '{"model": "chat", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}'  # a valid pair is fine
    ok = httpx.post(f"{stack.url}/v1/completions", content=pair, headers={**auth(), "content-type": "application/json"})
    assert ok.status_code == 200, ok.text
    raw = b'{"model": "chat", "prompt": "raw \xed\xa0\x80 bytes", "max_tokens": 2}'  # a surrogate as UTF-8 bytes
    for url, headers in ((stack.url, auth()), (replica, {})):
        r = httpx.post(f"{url}/v1/completions", content=raw, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"], (url, r.text)
    stack.assert_replicas_healthy()


@pytest.mark.timeout(60)
def test_error_answers_carry_an_id_and_never_the_exception_text(tmp_path: Path) -> None:
    """An unexpected exception inside the replica (here: the engine's result raises with a secret-looking text)
    gives a 500 with a generic message and an error id, in a stream an error event likewise; the text stays in
    the log."""
    from runtime.models.continuous_batching import GenerationStream
    from tests.runtime.replica_helpers import app_client

    async def main() -> None:
        async with app_client(lm_config()) as c:
            real_result, real_next = GenerationStream.result, GenerationStream.__anext__

            async def broken(self: GenerationStream) -> Any:
                raise RuntimeError("CUDA error: secret detail at 0xdeadbeef")

            GenerationStream.result = broken  # type: ignore[method-assign]
            GenerationStream.__anext__ = broken  # type: ignore[method-assign]
            try:
                body = {"model": "chat", "prompt": "x", "max_tokens": 2}
                plain = await c.post("/v1/completions", json=body)
                streamed = await c.post("/v1/completions", json={**body, "stream": True})
                v2 = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
                v2_answer = await c.post("/v2/models/chat/infer", json=v2)
            finally:
                GenerationStream.result, GenerationStream.__anext__ = real_result, real_next  # type: ignore[method-assign]
            assert plain.status_code == 500 and v2_answer.status_code == 500
            for text in (plain.text, streamed.text, v2_answer.text):
                assert "error id err-" in text and "secret" not in text and "CUDA" not in text, text
            assert "[DONE]" not in streamed.text  # the replica's own failure: the gateway counts it against it

    asyncio.run(main())
