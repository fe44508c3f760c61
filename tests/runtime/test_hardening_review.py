"""Issue 14 reviewed from outside: inputs an attacker holding a valid key sent to `odhsim serve` after the fixes,
which still failed, here as live tests (a real replica process behind a real gateway, HTTP on 127.0.0.1).

- `top_p` below float32's smallest value (1e-320) compared as 0 in the nucleus mask, so no token was kept and the
  request failed (422 sequence_failed) instead of being sampled from its top token, as vLLM does.
- A v2 language-model request's `inputs[0].parameters` are merged into the request's by the replica, but the
  gateway checked only the request-level `parameters`: `max_tokens` there went past `live.limits.max_tokens`.
- `n`, `best_of`, `logprobs`, `echo` in v2 `parameters` were silently ignored (refused on /v1).
- Triton binary BYTES data that is not UTF-8 reached the model with U+FFFD in place of the bad bytes, while the
  same text in a JSON body is a 400.
- JSON nested past Python's recursion limit was a 400 quoting Python's own error text.
- A pipelined request's head (sent in the chunk where the previous request ended) escaped the 16 KiB head limit.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runtime.processes import ReplicaProcess
from tests.runtime.gateway_fakes import ServerThread, auth, scenario, serve_gateway
from tests.runtime.replica_helpers import TINY_LM, lm_config, running_replicas

MAX_TOKENS_LIMIT = 20  # above the default 16, so a request without max_tokens is within it


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[ServerThread, ReplicaProcess]]:
    sc = scenario(live={"limits": {"max_tokens": MAX_TOKENS_LIMIT, "max_prompt_tokens": 64}})
    with running_replicas(("r0", lm_config("chat", TINY_LM))) as procs:
        url = procs["r0"].url
        with serve_gateway(sc, {"chat": [("r0", url)]}) as (_, server):
            yield server, procs["r0"]


def _targets(live: tuple[ServerThread, ReplicaProcess]) -> list[tuple[str, dict[str, str]]]:
    """The gateway (with a key) and the replica asked directly: both must apply the same rules."""
    server, replica = live
    return [(server.url, auth()), (replica.url, {})]


def _v2_text(
    prompt: str, parameters: dict[str, Any] | None = None, input_parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A v2 LM request; `input_parameters` go on the text_input tensor, `parameters` on the request."""
    tensor: dict[str, Any] = {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [prompt]}
    if input_parameters is not None:
        tensor["parameters"] = input_parameters
    body: dict[str, Any] = {"inputs": [tensor]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


@pytest.mark.timeout(120)
def test_top_p_below_float32_range_keeps_the_top_token(live: tuple[ServerThread, ReplicaProcess]) -> None:
    prompt = {"model": "chat", "prompt": "tiny top_p", "max_tokens": 6, "ignore_eos": True}
    for url, headers in _targets(live):
        greedy = httpx.post(f"{url}/v1/completions", json={**prompt, "temperature": 0}, headers=headers, timeout=30)
        assert greedy.status_code == 200, greedy.text
        for top_p in (1e-320, 5e-324, 1e-46):
            body = {**prompt, "temperature": 1.0, "top_p": top_p, "seed": 3}
            r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 200, (url, top_p, r.text)
            assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
            v2 = _v2_text("tiny top_p", {"top_p": top_p, "temperature": 1.0, "max_tokens": 6, "ignore_eos": True})
            r2 = httpx.post(f"{url}/v2/models/chat/infer", json=v2, headers=headers, timeout=30)
            assert r2.status_code == 200, (url, top_p, r2.text)
            assert r2.json()["outputs"][0]["data"] == [greedy.json()["choices"][0]["text"]]


@pytest.mark.timeout(60)
def test_v2_text_input_parameters_cannot_pass_the_gateway_limits(live: tuple[ServerThread, ReplicaProcess]) -> None:
    server, _ = live
    over = {"max_tokens": MAX_TOKENS_LIMIT * 5, "ignore_eos": True}
    r = httpx.post(f"{server.url}/v2/models/chat/infer", json=_v2_text("hi", over), headers=auth())
    assert r.status_code == 400 and f"exceeds the limit of {MAX_TOKENS_LIMIT}" in r.json()["error"], r.text
    # the same field on the input (the replica reads it there too) is held to the same limit
    r = httpx.post(f"{server.url}/v2/models/chat/infer", json=_v2_text("hi", input_parameters=over), headers=auth())
    assert r.status_code == 400, r.text
    assert f"exceeds the limit of {MAX_TOKENS_LIMIT}" in r.json()["error"], r.text
    # and an invalid value there is refused by the gateway itself, not forwarded
    r = httpx.post(
        f"{server.url}/v2/models/chat/infer", json=_v2_text("hi", input_parameters={"top_p": 0}), headers=auth()
    )
    assert r.status_code == 400 and "parameters.top_p" in r.json()["error"], r.text
    # the request-level value wins over the input's, as at the replica
    ok = _v2_text("hi", {"max_tokens": 3, "ignore_eos": True}, input_parameters=over)
    r = httpx.post(f"{server.url}/v2/models/chat/infer", json=ok, headers=auth(), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["completion_tokens"] == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("field", "value"), [("n", 2), ("best_of", 2), ("logprobs", 1), ("echo", True), ("suffix", "x")]
)
def test_v2_unimplemented_parameters_are_refused(
    live: tuple[ServerThread, ReplicaProcess], field: str, value: Any
) -> None:
    for url, headers in _targets(live):
        body = _v2_text("hi", {field: value, "max_tokens": 2})
        r = httpx.post(f"{url}/v2/models/chat/infer", json=body, headers=headers, timeout=30)
        assert r.status_code == 400, (url, r.text)
        assert f"parameters.{field}" in r.json()["error"], r.text


def _binary_v2(element: bytes) -> tuple[bytes, dict[str, str]]:
    blob = struct.pack("<I", len(element)) + element
    head = {
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(blob)}}
        ],
        "parameters": {"max_tokens": 2},
    }
    raw = json.dumps(head).encode()
    headers = {"inference-header-content-length": str(len(raw)), "content-type": "application/octet-stream"}
    return raw + blob, headers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("element", [b"a\xff\xfe", b"a\xed\xa0\x80", b"\xc3"], ids=["ff-fe", "cesu-surrogate", "cut"])
def test_v2_binary_bytes_that_are_not_utf8_are_400(live: tuple[ServerThread, ReplicaProcess], element: bytes) -> None:
    for url, headers in _targets(live):
        body, extra = _binary_v2(element)
        r = httpx.post(f"{url}/v2/models/chat/infer", content=body, headers={**headers, **extra}, timeout=30)
        assert r.status_code == 400, (url, r.text)
        assert "not valid UTF-8" in r.json()["error"], r.text
    body, extra = _binary_v2("h\u00e9".encode())
    server, _ = live
    r = httpx.post(f"{server.url}/v2/models/chat/infer", content=body, headers={**auth(), **extra}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["prompt_tokens"] == 4  # BOS + 'h' + the two bytes of 'é', none replaced


def _pipelined(port: int, data: bytes, wait_s: float = 5.0) -> list[int]:
    """Send `data` at once and read until the server closes or goes quiet: the statuses of the answers."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)]


@pytest.mark.timeout(60)
def test_a_pipelined_request_head_is_held_to_the_header_limit(live: tuple[ServerThread, ReplicaProcess]) -> None:
    """A second request sent in the same chunk as the first: its head started after the first's end, where only
    the first head's bytes were counted, so a 60 kB header (limit 16 KiB) was answered 200."""
    _, replica = live
    port = int(replica.url.rsplit(":", 1)[1])
    small = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    big = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 60_000 + b"\r\n\r\n"
    assert _pipelined(port, small + big) == [200, 431]
    many = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(3000)) + b"\r\n"
    assert _pipelined(port, small + many) == [200, 431]
    huge = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2_000_000 + b"\r\n\r\n"
    assert _pipelined(port, small + huge) == [200, 431]  # caught by the raw count: the first still answered
    assert _pipelined(port, small + small) == [200, 200]  # within the limit, pipelining still works


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/v1/completions", "/v2/models/chat/infer"])
def test_json_nested_too_deeply_is_400_without_python_text(
    live: tuple[ServerThread, ReplicaProcess], path: str
) -> None:
    body = b'{"model": "chat", "prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for url, headers in _targets(live):
        r = httpx.post(f"{url}{path}", content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400, (url, r.text)
        assert "nested too deeply" in r.text and "recursion" not in r.text, (url, r.text)
