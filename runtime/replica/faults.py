"""A replica's fault switch: what `odhsim serve` (runtime.faults) turns on for the scenario's `error_rate` and
`slow_replica` faults, through `POST /odhsim/faults` (behind the run's replica secret, like every replica route).

- error rate: each inference request (`POST /v1/completions`, `POST /v2/models/*/infer`) is answered `status`
  with probability `share`, at once, before it reaches the engine (as a vLLM server with a bad GPU or a broken
  build answers: no tokens, an error). The draws come from `numpy.random.default_rng(seed)`, the seed sent by the
  gateway from the fault's own stream, so a run with the same requests fails the same number of them.
- slow steps: each engine step (a forward pass of the LM's continuous batch, or a classifier batch) is followed,
  on the same worker thread, by a sleep of (factor - 1) times its measured duration, so the step takes `factor`
  times as long and everything behind it (the batch's tokens, the queue, /metrics) sees a straggler.

A start under a deploy fault gets `$ODHSIM_FAULT_START` = `<kind>:<label>` from `odhsim serve`: `load_oom` fails
the model's load as CUDA's allocator does (the process exits 1, the controller restarts it with its back-off),
`readiness_failure` answers every inference 503, the readiness test's included, so the test fails for real.

With no fault the request path pays one attribute test per request and the step one per step.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL_PATH = "/odhsim/faults"
START_FAULT_ENV = "ODHSIM_FAULT_START"
F = TypeVar("F", bound=Callable[..., Any])


class ErrorFault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    share: Annotated[float, Field(gt=0.0, le=1.0)]
    status: Annotated[int, Field(ge=500, le=599)] = 503
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0


class SlowFault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: Annotated[float, Field(gt=1.0, le=1000.0)]


class FaultControl(BaseModel):
    """The body of `POST /odhsim/faults`: a field given replaces that fault (null clears it); one left out stays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: ErrorFault | None = None
    slow: SlowFault | None = None


class ReplicaFaults:
    """The faults in force on this replica (shared by the ASGI layer and the engine's worker thread)."""

    def __init__(self) -> None:
        self.error: ErrorFault | None = None
        self._rng: np.random.Generator | None = None
        self.slow_factor: float | None = None
        self.injected_errors = 0
        self.slowed_steps = 0
        self._lock = threading.Lock()
        self.note = ""  # names the deploy fault that fails this start (its error answers say it)
        self.load_fault = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReplicaFaults:
        """The faults a start begins with (`$ODHSIM_FAULT_START`, see the module doc)."""
        faults = cls()
        kind, _, label = environ.get(START_FAULT_ENV, "").partition(":")
        if kind == "readiness_failure":
            faults.note = f"{label}: readiness_failure"
            faults.apply(FaultControl(error=ErrorFault(share=1.0, status=503)), {"error"})
        elif kind == "load_oom":
            faults.load_fault = label
        return faults

    def check_load(self) -> None:
        """Fail the model's load when this start is under a load_oom fault."""
        if self.load_fault:
            raise RuntimeError(
                f"CUDA out of memory while allocating the KV cache (injected fault {self.load_fault}: load_oom)"
            )

    def apply(self, control: FaultControl, fields: set[str]) -> None:
        if "error" in fields:
            self.error = control.error
            self._rng = None if control.error is None else np.random.default_rng(control.error.seed)
        if "slow" in fields:
            self.slow_factor = None if control.slow is None else control.slow.factor

    def state(self) -> dict[str, Any]:
        return {
            "error": None if self.error is None else self.error.model_dump(),
            "slow": None if self.slow_factor is None else {"factor": self.slow_factor},
            "injected_errors": self.injected_errors,
            "slowed_steps": self.slowed_steps,
        }

    def draw_error(self) -> int | None:
        """The status to answer this request with, or None to serve it."""
        error, rng = self.error, self._rng
        if error is None or rng is None:
            return None
        with self._lock:
            if rng.random() >= error.share:
                return None
            self.injected_errors += 1
        return error.status

    def stretched(self, step: F) -> F:
        """`step` (run on a worker thread) followed by a sleep of (factor - 1) x its duration while slowed."""

        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            factor = self.slow_factor
            if factor is not None:
                time.sleep((factor - 1.0) * (time.perf_counter() - t0))
                self.slowed_steps += 1
            return out

        return run  # type: ignore[return-value]


def _json(status: int, doc: object) -> tuple[int, bytes]:
    return status, json.dumps(doc).encode()


def _error_doc(path: str, status: int, note: str = "") -> object:
    message = f"injected fault{' ' + note if note else ''}: this replica answers a share of requests with {status}"
    if path.startswith("/v1"):
        return {"error": {"message": message, "type": "server_error", "param": None, "code": "injected_fault"}}
    return {"error": message}


def _is_inference(method: str, path: str) -> bool:
    return method == "POST" and (
        path == "/v1/completions" or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


class FaultSwitch:
    """ASGI middleware: the control route, and the injected error answers while an error fault holds."""

    def __init__(self, app: ASGIApp, faults: ReplicaFaults, replica_name: str) -> None:
        self.app = app
        self.faults = faults
        self.header = (b"x-odhsim-replica", replica_name.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == CONTROL_PATH:
            status, body = await self._control(method, receive)
        elif self.faults.error is not None and _is_inference(method, path) and (code := self.faults.draw_error()):
            status, body = _json(code, _error_doc(path, code, self.faults.note))
        else:
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), self.header]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _control(self, method: str, receive: Receive) -> tuple[int, bytes]:
        if method == "GET":
            return _json(200, self.faults.state())
        if method != "POST":
            return _json(405, {"error": f"{CONTROL_PATH} takes GET or POST"})
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _json(400, {"error": "the client went away"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            raw = json.loads(b"".join(chunks) or b"{}")
            control = FaultControl.model_validate(raw)
        except (ValueError, RecursionError) as err:
            first = err.errors(include_url=False)[0] if isinstance(err, ValidationError) else None
            detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "the body is not valid JSON"
            return _json(400, {"error": detail})
        self.faults.apply(control, set(control.model_fields_set))
        return _json(200, self.faults.state())
