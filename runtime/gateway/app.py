"""The gateway's HTTP surface (FastAPI): auth -> limits -> parsing -> response cache -> `Gateway.serve`.

Every answer is JSON (OpenAI's error shape on /v1, `{"error": ...}` on /v2) and carries `x-request-id`; every
request to a model ends counted in /metrics as answered, shed (429) or failed (5xx), or refused (4xx). Streams
are relayed chunk by chunk as the replica sends them (no buffering), so the client's time to first token is real.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policies.caching.key import response_key
from policies.caching.response_cache import TieredResponseCache
from policies.gateway.types import ABANDONED, ABORTED, DONE, REQUEST_FAULT
from runtime.errors import SEQUENCE_FAILED, SEQUENCE_FAILED_MARK, SEQUENCE_FAILED_STATUS, new_error_id
from runtime.gateway.auth import ANONYMOUS, Principal, bearer_token, lower_priority
from runtime.gateway.forward import Buffered, Streaming, UpstreamCall
from runtime.gateway.limits import (
    LimitError,
    block_ids,
    check_completion,
    check_rows,
    prompt_tokens,
    read_body,
    shown_name,
)
from runtime.gateway.metrics import CONTENT_TYPE
from runtime.gateway.protocol import (
    CompletionRequest,
    ProtocolError,
    V2InferRequest,
    check_v2_request,
    lm_parameters,
    parse_json,
    parse_v2_body,
    v2_metadata,
    validate,
)
from runtime.gateway.route import GatewayError, Job
from runtime.transport import REQUEST_DEADLINE

if TYPE_CHECKING:
    from runtime.gateway.core import Gateway

log = logging.getLogger("odhsim.gateway")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
SESSION_HEADER = "x-session-id"
"""A client's conversation id: requests carrying the same one (per tenant) are the session the router's
session-affinity scorer binds to the replica that last answered it."""
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


def _mark_retries(resp: Response, job: Job | None) -> Response:
    """Add `x-odhsim-retries` to an answer (an error included) whose request reached a replica."""
    if job is not None and job.attempts and RETRIES_HEADER not in resp.headers:
        resp.headers[RETRIES_HEADER] = str(job.retries)
    return resp


def _cache_key(
    route_name: str, version: str, req: CompletionRequest, tokens: list[int], blocks: np.ndarray, tenant: str | None
) -> int:
    # The prompt text is part of the key besides the block ids: block ids cover only whole 16-token blocks, so two
    # prompts differing in their last few tokens would otherwise share a key. The tenant scopes it (None: shared).
    return response_key(
        route_name,
        version,
        req.sampling(),
        prompt=req.prompt_text,
        block_ids=blocks,
        prompt_tokens=len(tokens),
        tenant=tenant,
    )


def _with_fresh_id(body: bytes) -> bytes:
    """A cached completion under a new id: a hit is a new response, and must not reveal the original's id."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and "id" in doc:
        doc["id"] = f"cmpl-{uuid.uuid4().hex}"
        return json.dumps(doc, separators=(",", ":")).encode()
    return body


class _StreamEnd:
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


async def _relay(end: _StreamEnd) -> AsyncIterator[bytes]:
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

    def __init__(self, end: _StreamEnd, headers: dict[str, str]) -> None:
        super().__init__(_relay(end), media_type="text/event-stream", headers=headers)
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.end.finish(None)
            await self.end.close()


def create_app(gateway: Gateway) -> FastAPI:
    """The ASGI app of one Gateway; its lifespan starts and stops the gateway's background work."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()

    app = FastAPI(title="odhsim gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestIdMiddleware)
    limits = gateway.live.limits

    @app.exception_handler(StarletteHTTPException)
    async def _http_exc(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = "not_found" if exc.status_code == 404 else "bad_route"
        return error_response(request.url.path, exc.status_code, str(exc.detail), reason)

    @app.exception_handler(RequestValidationError)
    async def _validation_exc(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 400, "invalid request", "bad_request")

    def principal_of(request: Request) -> Principal:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            if gateway.live.allow_anonymous and "authorization" not in request.headers:
                return ANONYMOUS
            raise HttpError(401, "missing API key: send `Authorization: Bearer KEY`", "unauthorized")
        found = gateway.keys.lookup(token)
        if found is None:
            raise HttpError(401, "invalid API key", "unauthorized")
        return found

    def route_for(model: str, principal: Principal) -> Any:
        route = gateway.routes.get(model)
        if route is None:
            raise HttpError(404, f"model '{shown_name(model)}' does not exist", "model_not_found", "model")
        if not principal.may_use(model):
            raise HttpError(403, f"this API key may not use model '{model}'", "model_not_allowed", "model")
        return route

    def priority_of(request: Request, principal: Principal) -> str:
        try:
            return lower_priority(principal.priority, request.headers.get("x-odhsim-priority"))
        except ValueError as err:
            raise HttpError(400, str(err), "bad_priority") from None

    async def guarded(
        request: Request, model_label: Callable[[], str], work: Callable[[], Any], count: bool = True
    ) -> Response:
        """Run a handler; every refusal or failure becomes a JSON answer, counted in /metrics."""
        path = request.url.path
        try:
            return await work()
        except HttpError as e:
            resp = error_response(path, e.status, e.message, e.reason, e.param)
        except (ProtocolError, LimitError) as e:
            reason = {408: "request_timeout", 413: "too_large"}.get(e.status, "bad_request")
            resp = error_response(path, e.status, e.message, reason, e.param)
        except GatewayError as e:
            resp = error_response(path, e.status, e.message, e.reason)
        except ClientDisconnect:  # the client left while its body was being read: nobody to answer, still counted
            resp = error_response(path, 499, "client closed the connection", "client_closed")
        except Exception:
            error_id = new_error_id()
            log.exception("unexpected error answering %s (error id %s)", path, error_id)
            resp = error_response(path, 500, f"internal gateway error; error id {error_id}", "internal")
        if count:
            gateway.metrics.count(model_label(), resp.status_code, resp.headers["x-odhsim-reason"])
        return resp

    def answer(result: Buffered, job: Job, extra: dict[str, str]) -> Response:
        headers = {
            "x-odhsim-replica": result.replica,
            "x-odhsim-model": result.model,
            RETRIES_HEADER: str(job.retries),
            **extra,
        }
        status = result.status
        reason = "ok" if status < 400 else SEQUENCE_FAILED if status == SEQUENCE_FAILED_STATUS else "replica_refused"
        gateway.metrics.count(job.model, status, reason)
        return Response(result.body, status_code=status, media_type=result.content_type, headers=headers)

    # -- OpenAI ------------------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        async def work() -> Response:
            principal = principal_of(request)
            data = [
                {"id": name, "object": "model", "created": 0, "owned_by": "odhsim", "root": name}
                for name in gateway.routes
                if principal.may_use(name)
            ]
            return JSONResponse({"object": "list", "data": data})

        return await guarded(request, lambda: "unknown", work, count=False)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        label = ["unknown"]
        job_ref: list[Job] = []
        seen: list[Job] = []

        async def work() -> Response:
            principal = principal_of(request)
            body = await read_body(request.headers, request.stream(), limits.max_body_bytes, body_deadline(request))
            doc = parse_json(body)
            named = doc.get("model") if isinstance(doc, dict) else None
            if isinstance(named, str) and named in gateway.routes:
                label[0] = named  # a refused body naming a known model is counted under that model
            req: CompletionRequest = validate(CompletionRequest, doc)
            route = route_for(req.model, principal)
            if route.deployment.kind != "llm":
                raise HttpError(
                    400,
                    f"model '{req.model}' is not a language model; use /v2/models/{req.model}/infer",
                    "wrong_model_kind",
                    "model",
                )
            priority = priority_of(request, principal)
            tokens = prompt_tokens(req.prompt_text)
            check_completion(len(tokens), req.tokens_to_generate, limits)
            blocks = block_ids(tokens)
            cache = gateway.cache
            key_for = None
            if req.deterministic and not req.stream and isinstance(cache, TieredResponseCache):
                key_tenant = cache.key_tenant(principal.tenant)

                def key_for(name: str, version: str) -> int:
                    return _cache_key(name, version, req, tokens, blocks, key_tenant)

            job = gateway.new_job(
                request.state.request_id, req.model, priority, principal.tenant, len(tokens), blocks,
                session=request.headers.get(SESSION_HEADER), cache_key_for=key_for,
            )  # fmt: skip
            job_ref.append(job)
            seen.append(job)
            extra: dict[str, str] = {}
            if key_for is not None:
                cached = job.cached
                if cached is not None:
                    gateway.metrics.cache_hits.labels(req.model, job.cache_tier).inc()
                    gateway.metrics.count(req.model, 200, "cache_hit")
                    headers = {"x-odhsim-cache": "hit", "x-odhsim-model": req.model}
                    return Response(_with_fresh_id(cached), media_type="application/json", headers=headers)
                extra["x-odhsim-cache"] = "miss"
            call = UpstreamCall(path=lambda m: "/v1/completions", body=req.upstream_body, stream=req.stream)
            result = await gateway.serve(job, call)
            if isinstance(result, Streaming):
                end = _StreamEnd(gateway, result, req.model, job)
                job_ref.clear()  # the stream's end closes the job
                headers = {
                    "x-odhsim-replica": result.response.headers.get("x-odhsim-replica", result.attempt.upstream.name),
                    "x-odhsim-model": result.model,
                    RETRIES_HEADER: str(job.retries),  # sent before the body: the retries before this attempt
                    "cache-control": "no-cache",
                }
                return RelayStream(end, headers)
            return answer(result, job, extra)

        try:
            return _mark_retries(await guarded(request, lambda: label[0], work), seen[0] if seen else None)
        finally:
            for job in job_ref:
                gateway.end_job(job)

    # -- Open Inference Protocol v2 ----------------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "odhsim-gateway", "version": "1", "extensions": []})

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = gateway.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str, request: Request) -> Response:
        async def work() -> Response:
            route = route_for(model, principal_of(request))
            return JSONResponse(v2_metadata(route.deployment))

        return await guarded(request, lambda: "unknown", work, count=False)

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str, request: Request) -> Response:
        async def work() -> Response:
            route_for(model, principal_of(request))
            ok = gateway.model_ready(model)
            return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)

        return await guarded(request, lambda: "unknown", work, count=False)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        label = model if model in gateway.routes else "unknown"
        job_ref: list[Job] = []

        async def work() -> Response:
            principal = principal_of(request)
            route = route_for(model, principal)
            body = await read_body(request.headers, request.stream(), limits.max_body_bytes, body_deadline(request))
            doc = parse_v2_body(body, request.headers.get("inference-header-content-length"))
            req: V2InferRequest = validate(V2InferRequest, doc)
            tensor, flat = check_v2_request(req, route.deployment)
            priority = priority_of(request, principal)
            blocks = np.zeros(0, dtype=np.int64)
            if route.deployment.live is not None and route.deployment.live.lm is not None:
                params = lm_parameters(req)
                tokens = prompt_tokens(flat[0])
                try:
                    check_completion(len(tokens), params.tokens_to_generate, limits)
                except LimitError as err:
                    param = "parameters.max_tokens" if err.param == "max_tokens" else "inputs"
                    raise LimitError(err.status, err.message, param) from None
                size = len(tokens)
                blocks = block_ids(tokens)
            else:
                check_rows(tensor.shape[0], limits, "inputs")
                size = tensor.shape[0]
            job = gateway.new_job(
                request.state.request_id, model, priority, principal.tenant, size, blocks,
                session=request.headers.get(SESSION_HEADER),
            )  # fmt: skip
            job_ref.append(job)
            call = UpstreamCall(path=lambda m: f"/v2/models/{m}/infer", body=lambda m: doc)
            result = await gateway.serve(job, call)
            assert isinstance(result, Buffered)
            return answer(result, job, {})

        try:
            return _mark_retries(await guarded(request, lambda: label, work), job_ref[0] if job_ref else None)
        finally:
            for job in job_ref:
                gateway.end_job(job)

    # -- metrics -----------------------------------------------------------------------------------------------
    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if gateway.live.metrics_auth == "key":  # live.metrics_auth: a valid API key, even with allow_anonymous
            token = bearer_token(request.headers.get("authorization"))
            if token is None or gateway.keys.lookup(token) is None:
                message = "/metrics needs an API key (live.metrics_auth: key)"
                return error_response(request.url.path, 401, message, "unauthorized")
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    app.state.gateway = gateway
    app.state.started_at = time.time()
    return app
