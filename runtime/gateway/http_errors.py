"""How the gateway's HTTP layer shapes its refusals and marks its answers: the HTTP layer's own refusal
(`HttpError`), the error body (OpenAI's shape under /v1, `{"error": ...}` elsewhere, the reason slug in
`x-odhsim-reason`), the request id every answer echoes, and the retries header of an answer that reached a
replica."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.gateway.route import Job
from runtime.transport import REQUEST_DEADLINE

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
RETRIES_HEADER = "x-odhsim-retries"
"""On every answer whose request went to a replica: its attempts beyond the first (a move to the fallback model
included); on a stream, the retries made before the attempt that is relayed began."""
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}


class HttpError(Exception):
    """A refusal by the HTTP layer (auth, unknown model, wrong kind of model)."""

    def __init__(self, status: int, message: str, reason: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.param = param


class RequestIdMiddleware:
    """Gives every request an id (the client's `x-request-id` when well-formed) and echoes it on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def error_response(
    path: str, status: int, message: str, reason: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """OpenAI's error shape under /v1, `{"error": message}` elsewhere; the reason slug also in a header."""
    h = {"x-odhsim-reason": reason, **(headers or {})}
    if status == 429:
        h.setdefault("retry-after", "1")
    if path.startswith("/v1"):
        kind = _OPENAI_TYPE.get(status, "server_error")
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": reason}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=h)


def body_deadline(request: Request) -> float | None:
    """The loop time by which the request's body must have arrived (set by runtime.transport; None without it)."""
    value = request.scope.get("state", {}).get(REQUEST_DEADLINE)
    return float(value) if isinstance(value, int | float) else None


def mark_retries(resp: Response, job: Job | None) -> Response:
    """Add `x-odhsim-retries` to an answer (an error included) whose request reached a replica, and
    `x-odhsim-model`: the model that held it last (the fallback's name when it went there, as on a served answer)."""
    if job is not None and job.attempts and RETRIES_HEADER not in resp.headers:
        resp.headers[RETRIES_HEADER] = str(job.retries)
        route = job.ticket.route
        if route is not None and "x-odhsim-model" not in resp.headers:
            resp.headers["x-odhsim-model"] = route.name
    return resp
