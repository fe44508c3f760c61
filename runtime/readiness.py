"""The readiness test a replica passes before it gets traffic: healthy, then one REAL inference.

Why a real inference and not just `/v2/health/ready`: a replica whose health endpoint answers can still fail its
first forward pass (bad weights, a shape mismatch, out of memory); KServe's readiness probes and llm-d's warm-up
catch that before routing, and so does this. An LM answers a 1-token completion; a fixed model a v2 infer of a
zero tensor of the shape its metadata declares.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from odhsim.scenario.deployment import ModelDeployment

TEST_PROMPT = "ready?"


class ReadinessError(Exception):
    """A replica failed to become healthy, or failed its test inference; the message says how."""


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        err = err.get("message", err)
    return str(err)[:200]


async def wait_healthy(
    client: httpx.AsyncClient,
    base_url: str,
    alive: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 0.1,
) -> float:
    """Poll `GET /v2/health/ready` until 200; raises ReadinessError if the process dies or `timeout_s` passes.
    Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        if not alive():
            raise ReadinessError("process exited before it was ready")
        try:
            resp = await client.get(f"{base_url}/v2/health/ready", timeout=max(poll_s * 10, 1.0))
            if resp.status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() - t0 > timeout_s:
            raise ReadinessError(f"not ready after {timeout_s:g} s (startup_timeout_s)")
        await asyncio.sleep(poll_s)


def zero_tensor(metadata: dict[str, Any]) -> dict[str, Any]:
    """A v2 input of zeros (batch 1) shaped as the model's metadata declares its first input."""
    spec = metadata["inputs"][0]
    shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": [0.0] * math.prod(shape)}


async def readiness_test(client: httpx.AsyncClient, model: ModelDeployment, base_url: str, timeout_s: float) -> str:
    """One real inference against a replica; returns a detail for the events, raises ReadinessError on failure."""
    t0 = time.monotonic()
    try:
        if model.kind == "llm":
            body = {"model": model.name, "prompt": TEST_PROMPT, "max_tokens": 1, "temperature": 0.0}
            resp = await client.post(f"{base_url}/v1/completions", json=body, timeout=timeout_s)
            if resp.status_code != 200:
                raise ReadinessError(f"test completion answered {resp.status_code}: {_error_text(resp)}")
            out = resp.json()
            if not out.get("choices") or out.get("usage", {}).get("completion_tokens") != 1:
                raise ReadinessError(f"test completion returned no token: {str(out)[:200]}")
            what = "a 1-token completion"
        else:
            meta_resp = await client.get(f"{base_url}/v2/models/{model.name}", timeout=timeout_s)
            if meta_resp.status_code != 200:
                raise ReadinessError(f"model metadata answered {meta_resp.status_code}: {_error_text(meta_resp)}")
            tensor = zero_tensor(meta_resp.json())
            body = {"id": "readiness", "inputs": [tensor]}
            resp = await client.post(f"{base_url}/v2/models/{model.name}/infer", json=body, timeout=timeout_s)
            if resp.status_code != 200:
                raise ReadinessError(f"test infer answered {resp.status_code}: {_error_text(resp)}")
            if not resp.json().get("outputs"):
                raise ReadinessError("test infer returned no outputs")
            what = f"a v2 infer of a zero {tensor['shape']} tensor"
    except httpx.HTTPError as err:
        raise ReadinessError(f"test request failed: {type(err).__name__}: {err}") from None
    return f"passed: {what} in {(time.monotonic() - t0) * 1000:.0f} ms"


class HttpProber:
    """The controller's prober over HTTP: `wait_healthy` then `test`, sharing one client."""

    def __init__(self, client: httpx.AsyncClient, test_timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
        self.client = client
        self.test_timeout_s = test_timeout_s
        self.poll_s = poll_s

    async def wait_healthy(self, model: ModelDeployment, proc: Any, timeout_s: float) -> float:
        return await wait_healthy(self.client, proc.url, proc.alive, timeout_s, self.poll_s)

    async def test(self, model: ModelDeployment, base_url: str) -> str:
        return await readiness_test(self.client, model, base_url, self.test_timeout_s)
