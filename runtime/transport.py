"""HTTP transport limits of the gateway and the replicas, enforced in uvicorn's httptools protocol.

Why a protocol subclass rather than uvicorn's options or an ASGI middleware: uvicorn 0.54 bounds the request head
only for its h11 protocol (`h11_max_incomplete_event_size`; the default, faster httptools protocol buffers a header
of any size), bounds no client's time to send a request (`timeout_keep_alive` runs only between requests: a fresh
connection that sends nothing, or a head or body that never ends, is held for good), and answers malformed HTTP in
text/plain. An ASGI middleware cannot help: the app is called only once a whole head has been parsed. So:

- the bytes of each request head are counted as they arrive; past `max_header_bytes` the answer is 431 (counted
  again from the parser's URL and header callbacks, so a head that starts inside the chunk where the previous
  request ended, as a pipelined request's does, is bounded too: the raw count sees only the first head of a chunk);
- a deadline is armed at a connection's opening and at each request's first byte; a request not wholly received
  by `request_read_timeout_s` is answered 408 (a body still arriving gets a `backstop_s` grace: the gateway reads
  bodies against the same deadline, which it finds in the scope's state, and answers and counts the 408 itself);
- malformed HTTP is answered 400.

Each refusal is JSON (OpenAI's error shape under /v1, `{"error": ...}` elsewhere), closes the connection after
draining what the client still sends for a moment (closing on unread data would reset the connection before the
client reads the answer), and is reported to `on_refused(status, reason)` (the gateway counts it in /metrics).
"""

from __future__ import annotations

import json
from asyncio import TimerHandle, Transport
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from odhsim.scenario.live import TransportLimits

REQUEST_DEADLINE = "odhsim_request_deadline"
"""Key in the ASGI scope's `state`: the loop time by which the request must have been received."""
DRAIN_S = 1.0
"""How long a refused connection's further input is read and dropped before the socket closes."""
_REASON_PHRASE = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
RefusedCallback = Callable[[int, str], None]


def error_body(path: bytes, status: int, reason: str, message: str) -> bytes:
    """The JSON error body of a refusal, in the shape the app itself uses on that path."""
    if path.startswith(b"/v1"):
        doc: dict[str, Any] = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": reason}
        }
    else:
        doc = {"error": message}
    return json.dumps(doc).encode()


def refusal_bytes(path: bytes, status: int, reason: str, message: str) -> bytes:
    body = error_body(path, status, reason, message)
    head = (
        f"HTTP/1.1 {status} {_REASON_PHRASE[status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-odhsim-reason: {reason}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module doc; configure with `guarded_protocol`."""

    limits: ClassVar[TransportLimits] = TransportLimits()
    backstop_s: ClassVar[float] = 0.0
    on_refused: ClassVar[RefusedCallback | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._line = b""  # the start of the request line, for the path of an answer sent before it was parsed
        self._parsed_head = 0  # the current head's bytes as parsed (a lower bound of its raw size)
        self._deferred: tuple[int, str, str] | None = None  # a refusal waiting for the previous request's answer
        self._deadline_at: float | None = None
        self._timer: TimerHandle | None = None
        self._refused = False

    # -- deadline --------------------------------------------------------------------------------------------
    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline_at = None

    def _start_request_clock(self) -> None:
        self._deadline_at = self.loop.time() + self.limits.request_read_timeout_s
        self._arm(self._deadline_at)

    def _expired(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.response_started:
            return  # the app is answering; the request body's end no longer matters to anyone
        if cycle is not None and cycle.response_complete and not self._in_head:
            self.transport.close()  # answered without reading its body, which never ended: nothing more to say
            return
        timeout = self.limits.request_read_timeout_s
        self._refuse(408, "request_timeout", f"the request was not received within {timeout:g} s")

    # -- refusal ---------------------------------------------------------------------------------------------
    def _refuse(self, status: int, reason: str, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() sees a disconnect and its sends are dropped
            cycle.message_event.set()
        transport: Transport = self.transport
        if transport.is_closing():
            return
        callback = type(self).on_refused
        if callback is not None:  # counted before it is answered: a client reading the answer finds it counted
            callback(status, reason)
        transport.write(refusal_bytes(self._path(), status, reason, message))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(DRAIN_S, transport.close)

    def _path(self) -> bytes:
        """The request's path as far as it is known (decides the error body's shape)."""
        parts = self._line.split(b"\r\n", 1)[0].split(b" ")
        return parts[1] if len(parts) > 1 else b""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to malformed HTTP, as JSON."""
        self._refuse(400, "bad_http", f"malformed HTTP request: {msg}")

    # -- protocol events -------------------------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_request_clock()  # a connection that never sends a byte is also bounded

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining: read and dropped until the socket closes
        if self._in_head:
            if self._deadline_at is None:
                self._start_request_clock()
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            part = len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if len(self._line) < 64 and b"\r\n" not in self._line:
                self._line = (self._line + data[:64]).lstrip(b"\r\n")
            if self._head_bytes + part > self.limits.max_header_bytes:
                self._head_too_large()
                return
            self._head_bytes += part
            self._tail = window[-3:]
        super().data_received(data)

    def _count_parsed(self, n: int) -> None:
        self._parsed_head += n
        if self._parsed_head > self.limits.max_header_bytes:
            self._head_too_large()

    def _head_too_large(self) -> None:
        if self._refused:
            return
        message = f"request line and headers exceed {self.limits.max_header_bytes} bytes"
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # pipelined behind a request still being answered: that one gets its answer first, then this 431
            self._refused = True  # what the client sends meanwhile is dropped
            self._disarm()
            self._deferred = (431, "headers_too_large", message)
        else:
            self._refuse(431, "headers_too_large", message)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None:
            status, reason, message = self._deferred
            self._deferred = None
            self._refused = False
            self._refuse(status, reason, message)

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 2)  # "name:value\r\n" at least; never more than the raw count
        if not self._refused:
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        self._parsed_head = 0
        super().on_message_begin()
        if self._deadline_at is None:
            self._start_request_clock()
        self.scope["state"][REQUEST_DEADLINE] = self._deadline_at

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # refused while its head was parsed: the app never sees it
        self._in_head = False
        if self._deadline_at is not None:
            self._arm(self._deadline_at + self.backstop_s)  # the body's part of the deadline; the app acts first
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # a refused request's body goes nowhere (its cycle may be another request's, or none)
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._disarm()  # wholly received: the deadline is met
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._line = b""


def guarded_protocol(
    limits: TransportLimits, *, backstop_s: float = 0.0, on_refused: RefusedCallback | None = None
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to these limits (uvicorn builds one instance per connection from the class)."""
    attrs = {"limits": limits, "backstop_s": float(backstop_s), "on_refused": staticmethod(on_refused)}
    return type("BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)


def uvicorn_options(
    limits: TransportLimits, *, backstop_s: float = 0.0, on_refused: RefusedCallback | None = None
) -> dict[str, Any]:
    """The uvicorn.Config keywords that apply `limits`."""
    return {
        "http": guarded_protocol(limits, backstop_s=backstop_s, on_refused=on_refused),
        "timeout_keep_alive": limits.keep_alive_s,
        "h11_max_incomplete_event_size": limits.max_header_bytes,  # only if someone switches to h11
    }
