"""The gateway's HTTP surface (FastAPI): auth -> limits -> parsing -> response cache -> `Gateway.serve`.

Every answer is JSON (OpenAI's error shape on /v1, `{"error": ...}` on /v2; http_errors.py) and carries
`x-request-id`; every request to a model ends counted in /metrics as answered, shed (429) or failed (5xx), or
refused (4xx). Streams are relayed chunk by chunk as the replica sends them (relay.py), so the client's time to
first token is real.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from policies.caching.key import response_key
from policies.caching.response_cache import TieredResponseCache
from runtime.errors import SEQUENCE_FAILED, SEQUENCE_FAILED_STATUS, new_error_id
from runtime.gateway.auth import ANONYMOUS, Principal, bearer_token, lower_priority
from runtime.gateway.forward import Buffered, Streaming, UpstreamCall
from runtime.gateway.http_errors import (
    RETRIES_HEADER,
    HttpError,
    RequestIdMiddleware,
    body_deadline,
    error_response,
    mark_retries,
)
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
from runtime.gateway.relay import RelayStream, StreamEnd
from runtime.gateway.route import GatewayError, Job

if TYPE_CHECKING:
    from runtime.gateway.core import Gateway

log = logging.getLogger("odhsim.gateway")
SESSION_HEADER = "x-session-id"
"""A client's conversation id: requests carrying the same one (per tenant) are the session the router's
session-affinity scorer binds to the replica that last answered it."""


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
                end = StreamEnd(gateway, result, req.model, job)
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
            return mark_retries(await guarded(request, lambda: label[0], work), seen[0] if seen else None)
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
            return mark_retries(await guarded(request, lambda: label, work), job_ref[0] if job_ref else None)
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
