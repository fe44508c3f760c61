"""Request bodies of the replica's HTTP API, validated with pydantic, and v2 tensor decoding.

Everything a client can get wrong surfaces here as `BadRequest` (the app answers 400 with its message), so no
malformed input reaches a model and no traceback reaches a client.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.openai_prompt import OnePrompt
from runtime.sampling_params import SamplingOptions, UnsupportedCompletionFields
from runtime.unicode_text import lone_surrogate_message, lone_surrogate_path
from runtime.v2_binary import BinaryBodyError, binary_slices, decode_bytes_tensor, split_body


class BadRequest(ValueError):
    """A client error (400); `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def parse_json(body: bytes) -> Any:
    """A JSON body as strict UTF-8, with no lone surrogate in any string or key; `BadRequest` naming the field."""
    try:
        text = body.decode("utf-8")
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except RecursionError:  # Python's own message would be the answer otherwise
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    except ValueError as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from None
    bad = lone_surrogate_path(doc, text)
    if bad is not None:
        raise BadRequest(lone_surrogate_message(bad), bad.split(".")[0])
    return doc


def validate(model: type[BaseModel], data: Any) -> Any:
    """`model.model_validate(data)`, its first error turned into `BadRequest("field: problem", field)`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        msg = first["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{loc}: {msg}", loc.split(".")[0] if first["loc"] else None) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GenerationOptions(_Body, SamplingOptions):
    """Sampling fields shared by /v1/completions and LM v2 infer parameters (runtime/sampling_params.py: the same
    rules as the gateway's)."""


class V2LmOptions(GenerationOptions, UnsupportedCompletionFields):
    """A language model's v2 infer parameters: the sampling fields, and the unimplemented ones refused as on /v1."""


class CompletionBody(GenerationOptions, UnsupportedCompletionFields, OnePrompt):
    """POST /v1/completions (OpenAI; `ignore_eos` is vLLM's extension). One prompt per request."""

    model: Annotated[str, Field(min_length=1)]
    stream: bool = False


class V2Tensor(_Body):
    name: Annotated[str, Field(min_length=1)]
    datatype: str
    shape: list[Annotated[int, Field(ge=0)]]
    data: Any = None
    parameters: dict[str, Any] | None = None


class V2Output(_Body):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferBody(_Body):
    """POST /v2/models/{m}/infer (Open Inference Protocol v2, JSON; Triton's binary-tensor extension accepted)."""

    id: str | None = None
    inputs: Annotated[list[V2Tensor], Field(min_length=1)]
    outputs: list[V2Output] | None = None
    parameters: dict[str, Any] | None = None


def parse_v2(body: bytes, header_length: str | None) -> tuple[V2InferBody, dict[str, bytes]]:
    """The JSON part of an infer body and, with the binary extension, each input's raw bytes by name."""
    try:
        body, blob = split_body(body, header_length)
    except BinaryBodyError as err:
        raise BadRequest(str(err)) from None
    req = validate(V2InferBody, parse_json(body))
    try:
        raw = binary_slices([(t.name, (t.parameters or {}).get("binary_data_size")) for t in req.inputs], blob)
    except BinaryBodyError as err:
        raise BadRequest(str(err), "inputs") from None
    return req, raw


def fp32_tensor(t: V2Tensor, raw: bytes | None, row_shape: tuple[int, ...]) -> np.ndarray:
    """An FP32 input of shape [batch, *row_shape] as a float32 array; `BadRequest` saying what is wrong otherwise."""
    want = [-1, *row_shape]
    if t.datatype != "FP32":
        raise BadRequest(f"input {t.name!r} must be FP32, got {t.datatype}", "inputs")
    if len(t.shape) != len(want) or tuple(t.shape[1:]) != row_shape or t.shape[0] < 1:
        raise BadRequest(f"input {t.name!r} must have shape {want} (batch >= 1), got {t.shape}", "inputs")
    if raw is not None:
        if len(raw) % 4:
            raise BadRequest(f"input {t.name!r}: {len(raw)} bytes is not a whole number of FP32 values", "inputs")
        arr = np.frombuffer(raw, dtype="<f4")
    else:
        if t.data is None:
            raise BadRequest(f"input {t.name!r} has no data", "inputs")
        if _has_non_numbers(t.data):
            raise BadRequest(f"input {t.name!r}: data must be numbers (flat or nested lists)", "inputs")
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
                arr = np.asarray(t.data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise BadRequest(f"input {t.name!r}: data must be numbers (flat or nested lists)", "inputs") from None
    if arr.size != math.prod(t.shape):
        raise BadRequest(f"input {t.name!r}: shape {t.shape} needs {math.prod(t.shape)} values, got {arr.size}")
    if not np.isfinite(arr).all():  # NaN / inf (binary data, or JSON numbers beyond float32) poison the output
        raise BadRequest(f"input {t.name!r}: data must be finite FP32 values", "inputs")
    return arr.reshape(t.shape)


def _has_non_numbers(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            return True
    return False


def bytes_tensor(t: V2Tensor, raw: bytes | None) -> list[str]:
    """A BYTES input of shape [1] as its strings (JSON strings, or Triton's 4-byte length-prefixed binary)."""
    if t.datatype != "BYTES":
        raise BadRequest(f"input {t.name!r} must be BYTES, got {t.datatype}", "inputs")
    if t.shape != [1]:
        raise BadRequest(f"input {t.name!r} must have shape [1], got {t.shape}", "inputs")
    if raw is not None:
        try:
            out = decode_bytes_tensor(raw)
        except BinaryBodyError as err:
            raise BadRequest(f"input {t.name!r}: {err}", "inputs") from None
    else:
        data = t.data
        while isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
            data = data[0]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise BadRequest(f"input {t.name!r}: data must be a list of one string", "inputs")
        out = data
    if len(out) != 1:
        raise BadRequest(f"input {t.name!r} must hold exactly one string, got {len(out)}", "inputs")
    return out
