"""The replica's ASGI app: KServe Open Inference Protocol v2, OpenAI completions (with SSE streaming), /metrics.

The model loads in the background after startup, so `/v2/health/live` answers at once and `/v2/health/ready` turns
200 only once the model is built and a warm-up pass ran. Every answer is JSON (the OpenAI error shape under /v1,
`{"error": ...}` elsewhere) and carries `x-odhsim-replica`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import (
    SEQUENCE_FAILED,
    SEQUENCE_FAILED_STATUS,
    internal_error_message,
    new_error_id,
    sequence_failed_message,
)
from runtime.models.continuous_batching import (
    ContextLengthError,
    EngineClosedError,
    GenerationResult,
    GenerationStream,
    SamplingParams,
    SequenceFailedError,
)
from runtime.replica.backends import Backend, ClassifierBackend, LmBackend, make_backend
from runtime.replica.config import ReplicaConfig
from runtime.replica.faults import FaultSwitch, ReplicaFaults
from runtime.replica.metrics import exposition
from runtime.replica.schemas import (
    BadRequest,
    CompletionBody,
    GenerationOptions,
    V2InferBody,
    V2LmOptions,
    bytes_tensor,
    fp32_tensor,
    parse_json,
    parse_v2,
    validate,
)
from runtime.replica.steps_spool import StepSpool
from runtime.tokenizer import encode

log = logging.getLogger("runtime.replica")

REPLICA_HEADER = "x-odhsim-replica"
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its work was cancelled."""


@dataclass
class ReplicaState:
    """What the routes share: the config, the backend, and whether it is ready (or failed to load)."""

    config: ReplicaConfig
    name: str
    backend: Backend
    ready: bool = False
    load_error: BaseException | None = None


# -- error bodies ----------------------------------------------------------------------------------------------


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def v2_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _error_for(path: str, status: int, message: str) -> JSONResponse:
    return openai_error(status, message) if path.startswith("/v1") else v2_error(status, message)


class _ReplicaHeader:
    """Adds `x-odhsim-replica` to every response and turns an uncaught exception into a JSON 500 (not a traceback).

    Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), name.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_header(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        except Exception:
            error_id = new_error_id()
            log.exception("unhandled error on %s (error id %s)", scope.get("path"), error_id)
            if started:
                raise
            resp = _error_for(scope.get("path", ""), 500, internal_error_message(error_id))
            await resp(scope, receive, send_with_header)


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """`await work`, unless the client disconnects first: then the work is cancelled and `ClientGone` raised."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # the client left (or this handler was cancelled): drop the work
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()


# -- the app ---------------------------------------------------------------------------------------------------


def create_app(
    config: ReplicaConfig,
    *,
    replica_name: str = "replica",
    device: str = "cpu",
    threads: int | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The replica app for `config`. `on_fatal(err)` is called if the model fails to load (the CLI then exits 1)."""
    faults = ReplicaFaults.from_env(os.environ)  # the scenario's faults on this replica, switched by `odhsim serve`
    state = ReplicaState(config, replica_name, make_backend(config, device, threads, faults))
    spool = StepSpool.from_env(config, replica_name)  # engine steps to $ODHSIM_STEPS_FILE (odhsim serve --out)

    async def load() -> None:
        try:
            faults.check_load()  # a start under a load_oom fault fails here
            await state.backend.start()
            if spool is not None:
                spool.start(state.backend)
            state.ready = True
            log.info("replica %s ready: %s %s", replica_name, config.model, config.version)
        except Exception as err:
            state.load_error = err
            log.error("replica %s failed to load %s: %s", replica_name, config.model, err)
            if on_fatal is not None:
                on_fatal(err)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await state.backend.close()
            if spool is not None:
                await spool.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.replica = state
    app.add_middleware(_ReplicaHeader, name=replica_name)
    app.add_middleware(FaultSwitch, faults=faults, replica_name=replica_name)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_for(request.url.path, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_for(request.url.path, 400, str(exc.errors()[:1]))

    _health_routes(app, state)
    _v2_routes(app, state)
    _openai_routes(app, state)

    @app.get("/metrics")
    async def metrics() -> Response:
        text = exposition(config.model, state.backend.metrics())
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _health_routes(app: FastAPI, state: ReplicaState) -> None:
    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "odhsim-replica", "version": "0.1.0", "extensions": []}


def _v2_routes(app: FastAPI, state: ReplicaState) -> None:
    cfg = state.config

    def unknown(m: str) -> JSONResponse:
        return v2_error(404, f"unknown model {m!r}: this replica serves {cfg.model!r}")

    @app.get("/v2/models/{m}")
    async def model_metadata(m: str) -> JSONResponse:
        if m != cfg.model:
            return unknown(m)
        return JSONResponse({"name": cfg.model, "versions": [cfg.version], **state.backend.metadata()})

    @app.get("/v2/models/{m}/ready")
    async def model_ready(m: str) -> JSONResponse:
        if m != cfg.model:
            return unknown(m)
        return JSONResponse({"name": m, "ready": state.ready}, status_code=200 if state.ready else 503)

    @app.post("/v2/models/{m}/infer")
    async def infer(m: str, request: Request) -> Response:
        if m != cfg.model:
            return unknown(m)
        if not state.ready:
            return v2_error(503, f"model {m!r} is not ready")
        try:
            req, raw = parse_v2(await request.body(), request.headers.get("inference-header-content-length"))
            backend = state.backend
            wanted = _requested_outputs(req, backend.metadata())
            if isinstance(backend, LmBackend):
                outputs, extra = await _lm_infer(request, backend, req, raw)
            else:
                outputs, extra = await _classifier_infer(request, backend, req, raw)
        except BadRequest as err:
            return v2_error(400, err.message)
        except ClientGone:
            return Response(status_code=499)
        except EngineClosedError as err:
            return v2_error(503, str(err))
        except SequenceFailedError as err:
            return v2_error(SEQUENCE_FAILED_STATUS, sequence_failed_message(err.error_id))
        body: dict[str, Any] = {
            "model_name": cfg.model,
            "model_version": cfg.version,
            "id": req.id if req.id is not None else uuid.uuid4().hex,
            "outputs": [o for o in outputs if wanted is None or o["name"] in wanted],
        }
        if extra:
            body["parameters"] = extra
        return JSONResponse(body)


def _requested_outputs(req: V2InferBody, metadata: dict[str, Any]) -> set[str] | None:
    if not req.outputs:
        return None
    known = {o["name"] for o in metadata["outputs"]}
    names = {o.name for o in req.outputs}
    if names - known:
        raise BadRequest(f"unknown output(s) {sorted(names - known)}; this model has {sorted(known)}")
    return names


def _single_input(req: V2InferBody, name: str) -> Any:
    if len(req.inputs) != 1 or req.inputs[0].name != name:
        raise BadRequest(f"expected exactly one input {name!r}, got {[t.name for t in req.inputs]}")
    return req.inputs[0]


async def _classifier_infer(
    request: Request, backend: ClassifierBackend, req: V2InferBody, raw: dict[str, bytes]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t = _single_input(req, "INPUT__0")
    rows = fp32_tensor(t, raw.get(t.name), backend.row_shape)
    probs, labels = await _until_disconnect(request, backend.infer(rows))
    outputs = [
        {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape), "data": probs.reshape(-1).tolist()},
        {"name": "label", "datatype": "INT64", "shape": list(labels.shape), "data": labels.tolist()},
    ]
    return outputs, {}


def _sampling(opts: GenerationOptions) -> SamplingParams:
    return SamplingParams(
        max_tokens=opts.tokens_to_generate,
        temperature=opts.temperature,
        top_p=opts.top_p,
        seed=opts.seed,
        ignore_eos=opts.ignore_eos,
        stop=opts.stop_strings,
    )


def _submit(backend: LmBackend, prompt: str, opts: GenerationOptions) -> GenerationStream:
    if backend.engine is None:
        raise EngineClosedError("the engine is not running")
    try:
        return backend.engine.submit(encode(prompt), _sampling(opts))
    except ContextLengthError as err:
        raise BadRequest(str(err), "prompt") from None
    except ValueError as err:
        raise BadRequest(str(err)) from None


async def _lm_infer(
    request: Request, backend: LmBackend, req: V2InferBody, raw: dict[str, bytes]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t = _single_input(req, "text_input")
    (prompt,) = bytes_tensor(t, raw.get(t.name))
    params = {**(t.parameters or {}), **(req.parameters or {})}
    try:
        opts = validate(V2LmOptions, params)
    except BadRequest as err:
        raise BadRequest(f"parameters.{err.message}", "parameters") from None
    stream = _submit(backend, prompt, opts)
    try:
        result = await _until_disconnect(request, stream.result())
    finally:
        stream.cancel()
    if result.finish_reason == "abort":
        raise EngineClosedError("the request was aborted (the replica is shutting down)")
    outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [result.text]}]
    return outputs, {"finish_reason": result.finish_reason, **_usage(result.prompt_tokens, result.completion_tokens)}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _openai_routes(app: FastAPI, state: ReplicaState) -> None:
    cfg = state.config

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        card = {"id": cfg.model, "object": "model", "owned_by": "odhsim", "max_model_len": cfg.context_len}
        return {"object": "list", "data": [card] if cfg.kind == "llm" else []}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = validate(CompletionBody, parse_json(await request.body()))
        except BadRequest as err:
            return openai_error(400, err.message, err.param)
        backend = state.backend
        if body.model != cfg.model or not isinstance(backend, LmBackend):
            return openai_error(404, f"The model `{body.model}` does not exist.", "model", "model_not_found")
        if not state.ready:
            return openai_error(503, f"model {cfg.model!r} is not ready", code="not_ready")
        try:
            stream = _submit(backend, body.prompt_text, body)
        except BadRequest as err:
            return openai_error(400, err.message, err.param, "context_length_exceeded" if err.param else None)
        except EngineClosedError as err:
            return openai_error(503, str(err))
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return StreamingResponse(
                _sse(stream, cid, created, cfg.model),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            result = await _until_disconnect(request, stream.result())
        except ClientGone:
            return Response(status_code=499)
        except SequenceFailedError as err:
            return openai_error(SEQUENCE_FAILED_STATUS, sequence_failed_message(err.error_id), code=SEQUENCE_FAILED)
        finally:
            stream.cancel()
        if result.finish_reason == "abort":
            return openai_error(503, "the request was aborted (the replica is shutting down)")
        return JSONResponse(_completion(cid, created, cfg.model, result))


def _completion(cid: str, created: int, model: str, result: GenerationResult) -> dict[str, Any]:
    choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(result.prompt_tokens, result.completion_tokens),
    }


async def _sse(stream: GenerationStream, cid: str, created: int, model: str) -> AsyncIterator[str]:
    """One `data:` chunk per token; the last carries finish_reason and usage; then `[DONE]`. A client that goes
    away cancels this generator, and with it the request's sequence."""
    n, finished = 0, False
    try:
        async for ev in stream:
            n += 1
            choice = {"index": 0, "text": ev.text, "logprobs": None, "finish_reason": ev.finish_reason}
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if ev.finish_reason is not None:
                chunk["usage"] = _usage(stream.prompt_tokens, n)
                finished = True
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        if finished:
            yield "data: [DONE]\n\n"
        else:
            err = {"message": "the request was aborted (the replica is shutting down)", "type": "server_error"}
            yield f"data: {json.dumps({'error': {**err, 'param': None, 'code': None}})}\n\n"
    except SequenceFailedError as exc:  # this request alone failed: its own fault, the stream ends normally
        err = {
            "message": sequence_failed_message(exc.error_id),
            "type": "invalid_request_error",
            "param": None,
            "code": SEQUENCE_FAILED,
        }
        yield f"data: {json.dumps({'error': err})}\n\ndata: [DONE]\n\n"
    except Exception:  # a failed engine step: tell the client in-band (no [DONE]), the status line is already sent
        error_id = new_error_id()
        log.exception("stream %s failed (error id %s)", cid, error_id)
        err = {"message": internal_error_message(error_id), "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': err})}\n\n"
    finally:
        stream.cancel()
