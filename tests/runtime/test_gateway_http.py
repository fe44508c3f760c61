"""The gateway over real HTTP in front of fake replicas: the official OpenAI client (plain and streaming), every
kind of bad input answered with the right status and a JSON error while the server keeps serving, body limits,
Open Inference Protocol v2, request ids, health, and the /metrics counters."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.runtime.gateway_fakes import (
    KEY_ALL,
    KEY_CHAT_ONLY,
    FakeReplica,
    ServerThread,
    auth,
    fake_replicas,
    scenario,
    serve_gateway,
)

LIMITS = {"max_body_bytes": 4096, "max_prompt_tokens": 200, "max_tokens": 64, "max_batch_rows": 8}


class Env:
    def __init__(self, gateway: Any, server: ServerThread, replicas: dict[str, FakeReplica]) -> None:
        self.gateway = gateway
        self.server = server
        self.url = server.url
        self.replicas = replicas
        self.http = httpx.Client(base_url=server.url, timeout=10.0)

    def complete(self, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        h = auth() if headers is None else headers
        if isinstance(body, bytes | str):
            return self.http.post("/v1/completions", content=body, headers={**h, "content-type": "application/json"})
        return self.http.post("/v1/completions", json=body, headers=h, **kw)

    def count(self, model: str, status: int, reason: str) -> float:
        labels = {"model": model, "status": status, "reason": reason}
        return self.gateway.metrics.value("odhsim_gateway_requests_total", labels)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    reps = {
        "a": FakeReplica("chat", "a", token_delay_s=0.08),
        "b": FakeReplica("chat", "b", token_delay_s=0.08),
        "bk": FakeReplica("backup", "bk"),
        "d": FakeReplica("digits", "d"),
    }
    with fake_replicas(*reps.values()) as servers:
        urls = {name: s.url for name, s in zip(reps, servers, strict=True)}
        upstreams = {
            "chat": [("a", urls["a"]), ("b", urls["b"])],
            "backup": [("bk", urls["bk"])],
            "digits": [("d", urls["d"])],
        }
        with serve_gateway(scenario(live={"limits": LIMITS}), upstreams) as (gateway, server):
            e = Env(gateway, server, reps)
            yield e
            e.http.close()


def _openai_error(resp: httpx.Response, status: int, code: str, param: str | None = "any") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code, err
    assert err["message"] and "Traceback" not in err["message"]
    if param != "any":
        assert err["param"] == param, err
    assert resp.headers["x-request-id"]
    return err


@pytest.mark.timeout(60)
def test_openai_client_plain_and_streaming(env: Env) -> None:
    client = openai.OpenAI(base_url=env.url + "/v1", api_key=KEY_ALL, max_retries=0, timeout=10.0)
    try:
        assert {m.id for m in client.models.list().data} == {"chat", "backup", "digits", "cold"}
        out = client.completions.create(model="chat", prompt="hello", max_tokens=5)
        assert out.choices[0].text == "abcde"
        assert out.choices[0].finish_reason == "length"
        assert out.usage is not None and out.usage.prompt_tokens == 6 and out.usage.completion_tokens == 5

        t0 = time.perf_counter()
        stream = client.completions.create(model="chat", prompt="hello", max_tokens=6, stream=True)
        chunks, arrivals = [], []
        for chunk in stream:
            arrivals.append(time.perf_counter() - t0)
            chunks.append(chunk)
    finally:
        client.close()
    assert "".join(c.choices[0].text for c in chunks) == "abcdef"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # Relayed as produced: the first token arrives long before the last (5 x 80 ms apart at the replica).
    assert arrivals[-1] - arrivals[0] >= 0.3
    assert arrivals[0] < arrivals[-1] - 0.3
    assert env.count("chat", 200, "ok") >= 2


BAD_COMPLETIONS: list[tuple[str, Any, dict[str, str] | None, int, str, str | None]] = [
    ("malformed json", b'{"model": "chat", ', None, 400, "bad_request", None),
    ("empty body", b"", None, 400, "bad_request", None),
    ("not an object", b"[1, 2]", None, 400, "bad_request", None),
    ("NaN", b'{"model": "chat", "prompt": "x", "temperature": NaN}', None, 400, "bad_request", None),
    ("missing prompt", {"model": "chat"}, None, 400, "bad_request", "prompt"),
    ("missing model", {"prompt": "x"}, None, 400, "bad_request", "model"),
    ("max_tokens string", {"model": "chat", "prompt": "x", "max_tokens": "5"}, None, 400, "bad_request", "max_tokens"),
    ("max_tokens float", {"model": "chat", "prompt": "x", "max_tokens": 2.5}, None, 400, "bad_request", "max_tokens"),
    ("max_tokens negative", {"model": "chat", "prompt": "x", "max_tokens": -3}, None, 400, "bad_request", "max_tokens"),
    ("max_tokens zero", {"model": "chat", "prompt": "x", "max_tokens": 0}, None, 400, "bad_request", "max_tokens"),
    ("max_tokens huge", {"model": "chat", "prompt": "x", "max_tokens": 10**12}, None, 400, "bad_request", "max_tokens"),
    (
        "temperature type",
        {"model": "chat", "prompt": "x", "temperature": "hot"},
        None,
        400,
        "bad_request",
        "temperature",
    ),
    ("two prompts", {"model": "chat", "prompt": ["a", "b"]}, None, 400, "bad_request", "prompt"),
    ("prompt over limit", {"model": "chat", "prompt": "x" * 200}, None, 400, "bad_request", "prompt"),
    ("unknown model", {"model": "nope", "prompt": "x"}, None, 404, "model_not_found", "model"),
    ("fixed model", {"model": "digits", "prompt": "x"}, None, 400, "wrong_model_kind", "model"),
    ("no key", {"model": "chat", "prompt": "x"}, {}, 401, "unauthorized", None),
    ("wrong key", {"model": "chat", "prompt": "x"}, auth("sk-wrong"), 401, "unauthorized", None),
    ("not bearer", {"model": "chat", "prompt": "x"}, {"Authorization": f"Basic {KEY_ALL}"}, 401, "unauthorized", None),
    ("model not allowed", {"model": "backup", "prompt": "x"}, auth(KEY_CHAT_ONLY), 403, "model_not_allowed", "model"),
    (
        "bad priority",
        {"model": "chat", "prompt": "x"},
        {**auth(), "x-odhsim-priority": "vip"},
        400,
        "bad_priority",
        None,
    ),
]


@pytest.mark.timeout(60)
def test_bad_completion_inputs_get_json_errors_and_the_server_keeps_serving(env: Env) -> None:
    hits_before = env.replicas["a"].hits + env.replicas["b"].hits
    for name, body, headers, status, code, param in BAD_COMPLETIONS:
        resp = env.complete(body, headers)
        err = _openai_error(resp, status, code, param)
        assert err["type"] == {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                               404: "invalid_request_error"}[status], name  # fmt: skip
    assert env.replicas["a"].hits + env.replicas["b"].hits == hits_before  # nothing bad reached a replica
    err = env.complete({"model": "chat", "prompt": "x", "max_tokens": 10**12}).json()["error"]
    assert "exceeds the limit of 64" in err["message"]
    assert "field required" in env.complete({"model": "chat"}).json()["error"]["message"]
    ok = env.complete({"model": "chat", "prompt": "x" * 150, "max_tokens": 64})  # at the limits: fine
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"].startswith("abc")
    assert env.count("unknown", 404, "model_not_found") >= 1
    assert env.count("unknown", 401, "unauthorized") >= 3  # refused before the body (and its model) is read
    assert env.count("backup", 403, "model_not_allowed") >= 1
    assert env.count("chat", 400, "bad_request") >= 5


@pytest.mark.timeout(60)
def test_body_over_limit_is_413_before_it_is_read(env: Env) -> None:
    big = json.dumps({"model": "chat", "prompt": "y" * 8000}).encode()
    resp = env.complete(big)
    _openai_error(resp, 413, "too_large")
    assert "4096" in resp.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the gateway must count while reading
        for _ in range(10):
            yield b" " * 1000

    resp = env.http.post("/v1/completions", content=chunks(), headers={**auth(), "content-type": "application/json"})
    _openai_error(resp, 413, "too_large")
    resp = env.http.post("/v2/models/digits/infer", content=big, headers=auth())
    assert resp.status_code == 413 and isinstance(resp.json()["error"], str)
    assert env.complete({"model": "chat", "prompt": "still here", "max_tokens": 2}).status_code == 200


def _v2(rows: int = 2, **over: Any) -> dict[str, Any]:
    t = {"name": "INPUT__0", "shape": [rows, 4], "datatype": "FP32", "data": [[0.5, 1, 2, 3]] * rows}
    t.update(over)
    return {"id": "req-7", "inputs": [t]}


@pytest.mark.timeout(60)
def test_v2_metadata_infer_and_bad_tensors(env: Env) -> None:
    meta = env.http.get("/v2/models/digits", headers=auth()).json()
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert env.http.get("/v2/models/digits/ready", headers=auth()).json() == {"name": "digits", "ready": True}
    assert env.http.get("/v2/models/cold/ready", headers=auth()).status_code == 503
    assert env.http.get("/v2/models/nope", headers=auth()).status_code == 404

    ok = env.http.post("/v2/models/digits/infer", json=_v2(), headers=auth())
    assert ok.status_code == 200, ok.text
    assert ok.json()["id"] == "req-7" and ok.json()["outputs"][0]["shape"] == [2]
    assert ok.headers["x-odhsim-replica"] == "d"

    bad: list[tuple[Any, int, str]] = [
        (b"{nope", 400, "malformed JSON"),
        ({"inputs": []}, 400, "inputs"),
        ({"id": "x"}, 400, "inputs: field required"),
        (_v2(datatype="INT64", data=[[1, 2, 3, 4]] * 2), 400, "must be FP32"),
        (_v2(datatype="FP8"), 400, "datatype"),
        (_v2(shape=[2, 5], data=[[1, 2, 3, 4, 5]] * 2), 400, "must have shape"),
        (_v2(data=[[1, 2, 3, 4], [1, 2, 3]]), 400, "needs 8 elements, data has 7"),
        (_v2(data=[[1, 2, 3, "4"]] * 2), 400, "not valid FP32"),
        (_v2(data=[[1, 2, 3, True]] * 2), 400, "not valid FP32"),
        (_v2(name="x"), 400, "takes one input named 'INPUT__0'"),
        (_v2(shape=[2, -4]), 400, "shape"),
        (_v2(rows=9), 400, "9 rows exceed the limit of 8"),
    ]
    for body, status, needle in bad:
        kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        resp = env.http.post("/v2/models/digits/infer", headers=auth(), **kw)
        assert resp.status_code == status, (body, resp.text)
        err = resp.json()["error"]
        assert isinstance(err, str) and needle in err, (needle, err)
    nope = env.http.post("/v2/models/nope/infer", json=_v2(), headers=auth())
    assert nope.status_code == 404 and "nope" in nope.json()["error"]
    assert env.http.post("/v2/models/digits/infer", json=_v2()).status_code == 401
    assert env.http.post("/v2/models/digits/infer", json=_v2(), headers=auth(KEY_CHAT_ONLY)).status_code == 403

    lm = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    assert env.http.post("/v2/models/chat/infer", json=lm, headers=auth()).status_code == 200
    neg = env.http.post("/v2/models/chat/infer", json={**lm, "parameters": {"max_tokens": -1}}, headers=auth())
    assert neg.status_code == 400 and "max_tokens: Input should be greater than or equal to 1" in neg.json()["error"]
    typ = env.http.post("/v2/models/chat/infer", json={**lm, "parameters": {"max_tokens": "9"}}, headers=auth())
    assert typ.status_code == 400 and "parameters.max_tokens" in typ.json()["error"]
    assert env.http.post("/v2/models/digits/infer", json=_v2(), headers=auth()).status_code == 200


@pytest.mark.timeout(30)
def test_request_ids_health_and_metrics(env: Env) -> None:
    given = env.complete({"model": "chat", "prompt": "x", "max_tokens": 1}, {**auth(), "x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    generated = {env.http.get("/v2/health/live").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3
    for resp in (
        env.http.get("/no/such/path"),
        env.complete({"model": "chat"}, {}),
        env.http.get("/v2/health/ready"),
        env.http.get("/metrics"),
        env.http.get("/v1/completions"),  # wrong method
    ):
        assert len(resp.headers["x-request-id"]) >= 8
    assert env.http.get("/no/such/path").json() == {"error": "Not Found"}
    assert env.http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert env.http.get("/v2/health/live").json() == {"live": True}
    assert env.http.get("/v2/health/ready").json() == {"ready": True}  # cold may scale from zero

    text = env.http.get("/metrics").text
    assert 'odhsim_gateway_requests_total{model="chat",reason="ok",status="200"}' in text
    assert 'odhsim_gateway_queue_length{model="chat"} 0.0' in text
    assert 'odhsim_gateway_breaker_open{model="chat"} 0.0' in text
    assert 'odhsim_gateway_replicas_ready{model="chat"} 2.0' in text
    assert "# TYPE odhsim_gateway_retries_total counter" in text
    assert "# TYPE odhsim_gateway_cache_hits_total counter" in text


@pytest.mark.timeout(60)
def test_retries_header_counts_the_attempts_beyond_the_first() -> None:
    # Round-robin goes in name order from the smallest: every request tries "a-bad" first, then "b-good".
    bad, good = FakeReplica("chat", "a-bad", fail="500"), FakeReplica("chat", "b-good")
    retry = {"type": "envoy-budget", "params": {"max_retries": 1, "base_interval_s": 0.001}}
    sc = scenario({"router": {"profile": "round-robin"}, "resilience": {"retry": retry}})
    with (
        fake_replicas(bad, good) as (sb, sg),
        serve_gateway(sc, {"chat": [("a-bad", sb.url), ("b-good", sg.url)]}) as (gw, srv),
        httpx.Client(base_url=srv.url, timeout=10.0) as http,
    ):
        plain = http.post("/v1/completions", json={"model": "chat", "prompt": "r", "max_tokens": 2}, headers=auth())
        assert plain.status_code == 200, plain.text
        assert plain.headers["x-odhsim-replica"] == "b-good" and plain.headers["x-odhsim-retries"] == "1"
        assert (bad.hits, good.hits) == (1, 1)

        body = {"model": "chat", "prompt": "s", "max_tokens": 3, "stream": True}
        with http.stream("POST", "/v1/completions", json=body, headers=auth()) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]"
        assert r.headers["x-odhsim-replica"] == "b-good" and r.headers["x-odhsim-retries"] == "1"
        assert (bad.hits, good.hits) == (2, 2)

        bad.fail = None  # healthy now: the next request (a-bad's turn) is answered at its first attempt
        first = http.post("/v1/completions", json={"model": "chat", "prompt": "t", "max_tokens": 2}, headers=auth())
        assert first.status_code == 200 and first.headers["x-odhsim-replica"] == "a-bad"
        assert first.headers["x-odhsim-retries"] == "0"

        bad.fail = good.fail = "500"  # both fail: one retry, then the policy gives up; the 502 says so too
        failed = http.post("/v1/completions", json={"model": "chat", "prompt": "u", "max_tokens": 2}, headers=auth())
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_failed"
        assert failed.headers["x-odhsim-retries"] == "1"
        assert (bad.hits, good.hits) == (4, 3)

        refused = http.post("/v1/completions", json={"model": "chat"}, headers=auth())
        assert refused.status_code == 400 and "x-odhsim-retries" not in refused.headers  # never reached a replica
        assert gw.metrics.value("odhsim_gateway_retries_total", {"model": "chat"}) == 3


@pytest.mark.timeout(30)
def test_client_leaving_mid_body_is_counted_499_not_an_internal_error(env: Env) -> None:
    import socket
    import time

    host, port = env.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY_ALL}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"model": "chat", "prompt": "')  # then leaves, 200 bytes promised
    pattern = 'odhsim_gateway_requests_total{model="unknown",reason="client_closed",status="499"} 1.0'
    deadline = time.monotonic() + 10
    while pattern not in (text := env.http.get("/metrics").text):
        assert time.monotonic() < deadline, [x for x in text.splitlines() if "requests_total{" in x]
        time.sleep(0.05)
    assert 'reason="internal"' not in text
    assert env.complete({"model": "chat", "prompt": "x", "max_tokens": 1}, auth()).status_code == 200
