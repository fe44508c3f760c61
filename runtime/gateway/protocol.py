"""Request bodies the gateway accepts (OpenAI completions, Open Inference Protocol v2) and their validation.

Everything a client sends is parsed here into a pydantic model or refused with a `ProtocolError` naming the field,
so no malformed input reaches a replica and no traceback reaches a client. Types are strict (a string is not a
number, a bool is not an int), as an API gateway should be.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from odhsim.scenario.deployment import ModelDeployment
from runtime.openai_prompt import OnePrompt
from runtime.sampling_params import (
    UNSUPPORTED_FIELDS,
    SamplingOptions,
    UnsupportedCompletionFields,
)
from runtime.unicode_text import lone_surrogate_message, lone_surrogate_path
from runtime.v2_binary import BinaryBodyError, inline_binary_inputs, split_body

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ProtocolError(Exception):
    """A malformed request: 400 with a message naming the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON document of a body; malformed JSON (or NaN / Infinity, or nesting too deep) is a ProtocolError."""
    if not body:
        raise ProtocolError("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")  # strict: json.loads(bytes) would let surrogates through (surrogatepass)
        doc = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ProtocolError("request body is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise ProtocolError(f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # Python's own message would be the answer otherwise
        raise ProtocolError("malformed JSON: nested too deeply") from None
    except ValueError as err:
        raise ProtocolError(f"malformed JSON: {err}") from None
    bad = lone_surrogate_path(doc, text)
    if bad is not None:
        raise ProtocolError(lone_surrogate_message(bad), bad.split(".")[0])
    return doc


def parse_v2_body(body: bytes, header_length: str | None) -> Any:
    """A v2 infer body as JSON; with Triton's binary-tensor extension (what tritonclient sends by default) the
    binary inputs are decoded into `data`, so the same checks apply and the replica gets plain JSON."""
    try:
        head, blob = split_body(body, header_length)
        doc = parse_json(head)
        return inline_binary_inputs(doc, blob) if isinstance(doc, dict) and header_length is not None else doc
    except BinaryBodyError as err:
        raise ProtocolError(str(err), "inputs") from None


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def validate(model: type[BaseModel], doc: Any) -> Any:
    """`model.model_validate(doc)`, with the first error turned into a ProtocolError naming its field."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"expected a JSON object, got {type(doc).__name__}")
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        path = _field_path(tuple(p for p in first["loc"] if not str(p).startswith("function-")))
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            msg = "field required"
        raise ProtocolError(f"{path}: {msg}", path.split(".")[0] if path != "body" else None) from None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# -- OpenAI completions ----------------------------------------------------------------------------------------
class CompletionRequest(_Strict, SamplingOptions, UnsupportedCompletionFields, OnePrompt):
    """POST /v1/completions: the fields the replicas implement (runtime/sampling_params.py has the rules, shared
    with the replicas); the OpenAI fields they do not implement are refused unless neutral; others are ignored."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool = False

    @property
    def deterministic(self) -> bool:
        """Greedy (temperature 0) or seeded sampling: a repeat gives the same answer, so it may be cached."""
        return self.temperature == 0.0 or self.seed is not None

    def sampling(self) -> dict[str, object]:
        """What, besides the prompt, decides the answer (the response-cache key)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return {
            "max_tokens": self.tokens_to_generate,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": stop,
            "ignore_eos": self.ignore_eos,
        }

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The body sent to a replica serving `model` (the fallback's name when falling back)."""
        body = self.model_dump(exclude_none=True, exclude=UNSUPPORTED_FIELDS)
        body["model"] = model
        body["max_tokens"] = self.tokens_to_generate
        return body


# -- Open Inference Protocol v2 --------------------------------------------------------------------------------
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
_INT_RANGE = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (INT64_MIN, INT64_MAX),
}


class V2Tensor(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=8)]
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(_Strict):
    id: Annotated[str, Field(max_length=256)] | None = None
    inputs: Annotated[list[V2Tensor], Field(min_length=1, max_length=16)]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


def _flatten(data: list[Any], limit: int) -> list[Any]:
    """Leaves of a nested list, iteratively (no recursion limit), refusing more than `limit` of them."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > limit:
                return out
        else:
            stack.pop()
    return out


def _check_element(v: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(v, str)
    if datatype == "BOOL":
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if datatype.startswith("FP"):
        return isinstance(v, int | float) and math.isfinite(v)
    lo, hi = _INT_RANGE[datatype]
    return isinstance(v, int) and lo <= v <= hi


def check_tensor(t: V2Tensor, where: str) -> list[Any]:
    """Data matches the shape (element count) and the datatype; returns the flat data."""
    expected = math.prod(t.shape)
    flat = _flatten(t.data, expected)
    if len(flat) != expected:
        got = f"more than {expected}" if len(flat) > expected else str(len(flat))
        raise ProtocolError(f"{where}: shape {t.shape} needs {expected} elements, data has {got}", "inputs")
    for v in flat:
        if not _check_element(v, t.datatype):
            raise ProtocolError(f"{where}: element {v!r} is not valid {t.datatype} data", "inputs")
    return flat


def _expected_inputs(m: ModelDeployment) -> tuple[str, str, list[int | None]] | None:
    """(name, datatype, shape with None for the batch dimension) of the model's one input; None when unknown."""
    spec = m.live
    if spec is None:
        return None
    if spec.lm is not None:
        return ("text_input", "BYTES", [1])
    if spec.mlp is not None:
        return ("INPUT__0", "FP32", [None, spec.mlp.input_dim])
    assert spec.cnn is not None
    c = spec.cnn
    return ("INPUT__0", "FP32", [None, c.channels, c.height, c.width])


def check_v2_request(req: V2InferRequest, m: ModelDeployment) -> tuple[V2Tensor, list[Any]]:
    """Every input is self-consistent, and (when the scenario says what the model runs) it is the model's input;
    returns the (first) input and its flat data."""
    flats = [check_tensor(t, f"inputs.{i} ({t.name})") for i, t in enumerate(req.inputs)]
    expected = _expected_inputs(m)
    if expected is None:
        return req.inputs[0], flats[0]
    name, datatype, shape = expected
    if len(req.inputs) != 1 or req.inputs[0].name != name:
        got = [t.name for t in req.inputs]
        raise ProtocolError(f"model '{m.name}' takes one input named {name!r}, got {got}", "inputs")
    t = req.inputs[0]
    if t.datatype != datatype:
        raise ProtocolError(f"input {name!r} must be {datatype}, got {t.datatype}", "inputs")
    if len(t.shape) != len(shape) or any(
        want is not None and want != got for want, got in zip(shape, t.shape, strict=False)
    ):
        spelled = ["batch" if s is None else s for s in shape]
        raise ProtocolError(f"input {name!r} must have shape {spelled}, got {t.shape}", "inputs")
    return t, flats[0]


def v2_metadata(m: ModelDeployment) -> dict[str, Any]:
    """GET /v2/models/{m}: the model's metadata from the scenario (available even when scaled to zero)."""
    spec = m.live
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    if spec is not None and spec.lm is not None:
        inputs = [{"name": "text_input", "datatype": "BYTES", "shape": [1]}]
        outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]
    elif spec is not None:
        expected = _expected_inputs(m)
        assert expected is not None
        classes = spec.mlp.classes if spec.mlp is not None else spec.cnn.classes  # type: ignore[union-attr]
        inputs = [{"name": expected[0], "datatype": "FP32", "shape": [-1 if s is None else s for s in expected[2]]}]
        outputs = [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]
    return {
        "name": m.name,
        "versions": [m.version],
        "platform": "pytorch_torchscript",
        "inputs": inputs,
        "outputs": outputs,
    }


class V2LmParameters(_Strict, SamplingOptions, UnsupportedCompletionFields):
    """`parameters` of a v2 infer request to a language model: the completion's sampling fields, same rules; the
    fields this runtime does not implement (`n`, `logprobs`, ...) are refused as on /v1, not silently ignored."""


def lm_parameters(req: V2InferRequest) -> V2LmParameters:
    """The parameters the replica will use: `text_input`'s own, overridden by the request's (the replica merges
    them so), so the gateway's limits see the same `max_tokens` the replica generates."""
    merged: dict[str, Any] = {}
    for t in req.inputs:
        if t.name == "text_input":
            merged.update(t.parameters or {})
    merged.update(req.parameters or {})
    try:
        return validate(V2LmParameters, merged)
    except ProtocolError as err:
        raise ProtocolError(f"parameters.{err.message}", "parameters") from None
