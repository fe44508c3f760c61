"""One attempt at a replica over HTTP, and what it gives back: a whole answer, an open stream, or a failure kind
the retry policy understands (policies.resilience.retry.FAILURE_KINDS)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from runtime.gateway.upstream import LinkFault, connect_timeout_s

if TYPE_CHECKING:
    from runtime.gateway.attempt import Attempt


class AttemptFailed(Exception):
    """One attempt at a replica failed before the client saw a byte; `kind` is a retry failure kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Buffered:
    """A whole answer from a replica (any status below 500)."""

    status: int
    body: bytes
    content_type: str
    replica: str
    model: str


@dataclass(eq=False, slots=True)
class Streaming:
    """An open SSE stream from a replica whose first chunk has arrived; the caller relays and then calls
    `attempt.done` (the stream's end decides success)."""

    attempt: Attempt
    response: httpx.Response
    chunks: Any  # the response's async byte iterator, positioned after `first`
    first: bytes
    model: str


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """How to send a job to a replica of `model`: POST `path(model)` with `body(model)`."""

    path: Callable[[str], str]
    body: Callable[[str], dict[str, Any]]
    stream: bool = False


async def forward(
    client: httpx.AsyncClient, attempt: Attempt, call: UpstreamCall, timeout_s: float
) -> Buffered | Streaming:
    """One attempt: POST to the attempt's replica; AttemptFailed when it failed before the client saw a byte.

    A 5xx, a connect error, a reset or a timeout fails the attempt; a streamed answer is returned once its first
    chunk has arrived (so a replica dying before it is still retried); anything below 500 is the answer. The
    caller records the attempt's end (`attempt.done`)."""
    route, u = attempt.route, attempt.upstream
    url = u.base_url + call.path(route.name)
    headers = {"x-request-id": attempt.job.request_id}
    req = client.build_request("POST", url, json=call.body(route.name), headers=headers)
    link = u.link
    if link is not None:  # a network fault (runtime.faults): no connection, or a delay each way
        await _cross(link, timeout_s)
    try:
        resp = await client.send(req, stream=True)
    except httpx.ConnectError as err:
        raise AttemptFailed("connect-failure", str(err) or type(err).__name__) from None
    except httpx.TimeoutException as err:
        raise AttemptFailed("timeout", str(err) or type(err).__name__) from None
    except httpx.HTTPError as err:
        raise AttemptFailed("reset", str(err) or type(err).__name__) from None
    try:
        if link is not None:  # the answer's way back
            await asyncio.sleep(link.delay_s())
        if resp.status_code >= 500:
            with contextlib.suppress(httpx.HTTPError):
                await resp.aread()
            kind = "gateway-error" if resp.status_code in (502, 503, 504) else "5xx"
            raise AttemptFailed(kind, f"HTTP {resp.status_code} from {u.name}")
        if call.stream and resp.status_code == 200:
            chunks = resp.aiter_raw()
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = b""
            except httpx.TimeoutException as err:
                raise AttemptFailed("timeout", f"no first chunk: {err}") from None
            except httpx.HTTPError as err:
                raise AttemptFailed("reset", f"no first chunk: {err}") from None
            return Streaming(attempt, resp, chunks, first, route.name)
        try:
            async with asyncio.timeout(timeout_s):
                body = await resp.aread()
        except TimeoutError:
            raise AttemptFailed("timeout", f"no answer from {u.name} in {timeout_s} s") from None
        except httpx.HTTPError as err:
            raise AttemptFailed("reset", str(err) or type(err).__name__) from None
    except BaseException:
        await resp.aclose()
        raise
    await resp.aclose()
    ctype = resp.headers.get("content-type", "application/json")
    return Buffered(resp.status_code, body, ctype, resp.headers.get("x-odhsim-replica", u.name), route.name)


async def _cross(link: LinkFault, timeout_s: float) -> None:
    """The request's way out over a faulty link: a partition fails it as a connect failure once the connect
    timeout has passed; latency and jitter delay it."""
    if link.partition:
        wait_s = connect_timeout_s(timeout_s)
        await asyncio.sleep(wait_s)
        raise AttemptFailed("connect-failure", f"no connection in {wait_s:g} s (network partition, fault {link.label})")
    await asyncio.sleep(link.delay_s())
