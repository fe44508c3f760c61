"""The relay of a streamed answer: the replica's SSE bytes go to the client chunk by chunk as they come (no
buffering, so the client's time to first token is real), and how the stream ended is classified once: `[DONE]`
(ok), the replica's own `sequence_failed` event (the request's fault), the replica failing mid-stream (aborted:
counted against it, never retried), or the client leaving (abandoned)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import TYPE_CHECKING

import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from policies.gateway.types import ABANDONED, ABORTED, DONE, REQUEST_FAULT
from runtime.errors import SEQUENCE_FAILED, SEQUENCE_FAILED_MARK, SEQUENCE_FAILED_STATUS
from runtime.gateway.forward import Streaming
from runtime.gateway.route import Job

if TYPE_CHECKING:
    from runtime.gateway.core import Gateway


class StreamEnd:
    """The end of a relayed stream, recorded once: release the replica slot and count the outcome."""

    def __init__(self, gateway: Gateway, s: Streaming, model_label: str, job: Job) -> None:
        self.gateway = gateway
        self.s = s
        self.model_label = model_label
        self.job = job
        self.done = False

    def finish(
        self, ok: bool | None, failure: str | None = None, detail: str = "", request_fault: bool = False
    ) -> None:
        """`request_fault`: the replica ended the stream with the request's own failure (a healthy replica)."""
        if self.done:
            return
        self.done = True
        if request_fault:
            self.s.attempt.done(REQUEST_FAULT, SEQUENCE_FAILED)
        elif ok is True:
            self.s.attempt.done(DONE)
        elif ok is False:  # bytes already went out: counts against the replica, never retried
            self.s.attempt.done(ABORTED, detail, kind=failure or "reset")
        else:
            self.s.attempt.done(ABANDONED)
        if request_fault:
            self.gateway.metrics.count(self.model_label, SEQUENCE_FAILED_STATUS, SEQUENCE_FAILED)
        elif ok is True:
            self.gateway.metrics.count(self.model_label, 200, "ok")
        elif ok is False:
            self.gateway.metrics.count(self.model_label, 502, "stream_aborted")
        else:
            self.gateway.metrics.count(self.model_label, 499, "client_closed")
        self.gateway.end_job(self.job)

    async def close(self) -> None:
        with suppress(httpx.HTTPError):
            await self.s.response.aclose()


def _sse_error(message: str) -> bytes:
    err = {"error": {"message": message, "type": "server_error", "param": None, "code": "stream_aborted"}}
    return f"data: {json.dumps(err)}\n\n".encode() + b"data: [DONE]\n\n"


async def _chunks(s: Streaming) -> AsyncIterator[bytes]:
    if s.first:
        yield s.first
    async for chunk in s.chunks:
        yield chunk


async def _relay(end: StreamEnd) -> AsyncIterator[bytes]:
    """The replica's SSE bytes as they come; a replica failing mid-stream ends the stream with an error event.

    The outcome is recorded when `[DONE]` arrives, before it is relayed, so a client that has read the whole
    stream finds it counted. A stream the replica ended with the request's own failure (its `sequence_failed`
    error event, then `[DONE]`) is counted as that, and not against the replica."""
    tail = b""
    request_fault = False
    failed: tuple[str, str] | None = None
    try:
        async for chunk in _chunks(end.s):
            window = tail + chunk
            request_fault = request_fault or SEQUENCE_FAILED_MARK in window
            tail = window[-64:]
            if b"[DONE]" in tail:
                end.finish(True, request_fault=request_fault)
            yield chunk
    except httpx.HTTPError as err:
        kind = "timeout" if isinstance(err, httpx.TimeoutException) else "reset"
        failed = (kind, f"mid-stream: {err or type(err).__name__}")
    finally:
        await end.close()
    if end.done:
        return
    if failed is None:
        failed = ("reset", "the stream ended without [DONE]")
    end.finish(False, *failed)
    yield _sse_error(f"the replica failed mid-stream ({failed[0]}); the answer is incomplete")


class RelayStream(StreamingResponse):
    """A StreamingResponse that always releases its replica slot, even when the client leaves before the first
    chunk (the generator's own `finally` would then never run)."""

    def __init__(self, end: StreamEnd, headers: dict[str, str]) -> None:
        super().__init__(_relay(end), media_type="text/event-stream", headers=headers)
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.end.finish(None)
            await self.end.close()
