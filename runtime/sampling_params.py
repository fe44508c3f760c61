"""The sampling fields of a completion and the OpenAI fields the runtime does not implement, validated by one set of
rules that the gateway's and the replicas' request models both inherit, so the edge and the replica agree.

Temperature follows vLLM (`vllm/sampling_params.py`): negative is refused, below `SAMPLING_EPS` (1e-5) is greedy,
and a positive value below `MIN_TEMPERATURE` (vLLM's `_MAX_TEMP`, 1e-2) is raised to it, since dividing logits by a
tiny temperature overflows to inf and softmax then yields NaN. The value a request model holds is the effective one
(greedy is 0.0), so response-cache keys and the sampler see what is actually done. Every number must be a finite
JSON number of the right kind (a bool is not a number, 2.0 is not an int), whichever side validates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StrictBool

SAMPLING_EPS = 1e-5
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 2.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_STRINGS = 4


def effective_temperature(t: float) -> float:
    """What a validated temperature means: 0.0 (greedy) below SAMPLING_EPS, else at least MIN_TEMPERATURE."""
    if t < SAMPLING_EPS:
        return 0.0
    return max(t, MIN_TEMPERATURE)


Temperature = Annotated[
    float,
    Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, strict=True),
    AfterValidator(effective_temperature),
]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=True)]
MaxTokens = Annotated[int, Field(ge=1, strict=True)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX, strict=True)]
StopString = Annotated[str, Field(min_length=1, strict=True)]
Stop = Annotated[str, Field(strict=True)] | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]


class SamplingOptions(BaseModel):
    """Sampling fields shared by /v1/completions and a language model's v2 `parameters` (OpenAI / vLLM names)."""

    max_tokens: MaxTokens | None = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    ignore_eos: StrictBool = False
    stop: Stop | None = None

    @property
    def tokens_to_generate(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None or self.stop == "":
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _only(allowed: Callable[[Any], bool], message: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if not allowed(v):
            raise ValueError(message)
        return v

    return AfterValidator(check)


_NOT_SUPPORTED = "is not supported by this server"


class UnsupportedCompletionFields(BaseModel):
    """OpenAI completion fields this runtime does not implement: accepted at their neutral value only, refused
    with a 400 naming the field otherwise, never silently ignored."""

    n: Annotated[int, Field(strict=True), _only(lambda v: v == 1, "only n=1 is supported (one choice per request)")] = 1
    best_of: Annotated[
        int | None, Field(strict=True), _only(lambda v: v in (None, 1), "only best_of=1 is supported")
    ] = None
    logprobs: Annotated[Any, _only(lambda v: v is None, f"logprobs {_NOT_SUPPORTED}")] = None
    echo: Annotated[StrictBool, _only(lambda v: v is False, f"echo=true {_NOT_SUPPORTED}")] = False
    suffix: Annotated[Any, _only(lambda v: v is None, f"suffix {_NOT_SUPPORTED}")] = None
    presence_penalty: Annotated[
        float, Field(strict=True, allow_inf_nan=False), _only(lambda v: v == 0, f"presence_penalty {_NOT_SUPPORTED}")
    ] = 0.0
    frequency_penalty: Annotated[
        float, Field(strict=True, allow_inf_nan=False), _only(lambda v: v == 0, f"frequency_penalty {_NOT_SUPPORTED}")
    ] = 0.0
    logit_bias: Annotated[Any, _only(lambda v: v is None or v == {}, f"logit_bias {_NOT_SUPPORTED}")] = None


UNSUPPORTED_FIELDS = frozenset(UnsupportedCompletionFields.model_fields)
"""Never forwarded upstream: at their neutral value they change nothing."""
