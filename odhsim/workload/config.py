"""Pydantic models for a scenario's `workload:` section (validated, frozen, unknown keys rejected).

Why here and not in the scenario module: the workload builder needs only this section, and the models double as
the documentation of what a workload YAML may contain. See `traces/README.md` for a worked example.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from odhsim.workload.schema import PRIORITY_CLASSES

TraceFormatName = Literal["auto", "azure2023", "azure2024", "mooncake", "csv"]
Weights = Annotated[dict[str, PositiveFloat], Field(min_length=1)]
"""Relative weights by name; they need not sum to 1."""
NonNegative = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FixedDist(_Model):
    dist: Literal["fixed"]
    value: PositiveInt


class LogNormalDist(_Model):
    """Either median and sigma (of the log), or mean and cv; rounded and clipped to [min, max]."""

    dist: Literal["lognormal"]
    median: PositiveFloat | None = None
    sigma: NonNegative | None = None
    mean: PositiveFloat | None = None
    cv: NonNegative | None = None
    min: PositiveInt = 1
    max: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_parametrisation(self) -> LogNormalDist:
        given = {k for k in ("median", "sigma", "mean", "cv") if getattr(self, k) is not None}
        if given not in ({"median", "sigma"}, {"mean", "cv"}):
            raise ValueError(f"give either median and sigma, or mean and cv (got {sorted(given)})")
        if self.max is not None and self.max < self.min:
            raise ValueError("max must be >= min")
        return self


class ResampleDist(_Model):
    """Bootstrap from a trace's prompt or output column (path relative to the scenario file)."""

    dist: Literal["resample"]
    path: str
    column: Literal["prompt", "output"]
    format: TraceFormatName = "auto"
    trace_filter: str | None = None


LengthDist = Annotated[FixedDist | LogNormalDist | ResampleDist, Field(discriminator="dist")]
# Defaults shaped like the Azure 2023 conversation trace (input p50 1,020; output p50 129).
DEFAULT_PROMPT = LogNormalDist(dist="lognormal", median=1020, sigma=1.0, min=1, max=16000)
DEFAULT_OUTPUT = LogNormalDist(dist="lognormal", median=129, sigma=1.0, min=1, max=2000)


def _check_priorities(v: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(v) - set(PRIORITY_CLASSES))
    if unknown:
        raise ValueError(f"unknown priority class(es) {unknown}; known: {list(PRIORITY_CLASSES)}")
    return v


PriorityWeights = Annotated[Weights, AfterValidator(_check_priorities)]


class _Source(_Model):
    """Fields every source has: a start offset, an optional name, optional per-source attribute weights."""

    name: str | None = None
    start_s: NonNegative = 0.0
    models: Weights | None = None
    priorities: PriorityWeights | None = None
    tenants: Weights | None = None


class _Synthetic(_Source):
    duration_s: PositiveFloat | None = None
    requests: PositiveInt | None = None
    prompt_tokens: LengthDist = DEFAULT_PROMPT
    output_tokens: LengthDist = DEFAULT_OUTPUT

    @model_validator(mode="after")
    def _bounded(self) -> _Synthetic:
        if self.duration_s is None and self.requests is None:
            raise ValueError("give duration_s or requests (or both: whichever ends first)")
        return self


class PoissonSource(_Synthetic):
    kind: Literal["poisson"]
    rate: PositiveFloat


class GammaSource(_Synthetic):
    """Renewal process with gamma gaps: cv 1 is Poisson, larger is burstier."""

    kind: Literal["gamma"]
    rate: PositiveFloat
    cv: PositiveFloat


class DiurnalSource(_Synthetic):
    """rate(t) = rate·(1 + amplitude·sin(2π(t − phase_s)/period_s)), t in simulation seconds."""

    kind: Literal["diurnal"]
    rate: PositiveFloat
    amplitude: Annotated[float, Field(ge=0, le=1)] = 0.5
    period_s: PositiveFloat = 86_400.0
    phase_s: float = 0.0


class SpikeSource(_Source):
    """Exactly `requests` extra arrivals, uniform over [start_s, start_s + length_s)."""

    kind: Literal["spike"]
    requests: PositiveInt
    length_s: PositiveFloat
    prompt_tokens: LengthDist = DEFAULT_PROMPT
    output_tokens: LengthDist = DEFAULT_OUTPUT


class TraceSource(_Source):
    """A trace file replayed; transforms in order: window, sample, jitter, time/rate scale, limit, start_s."""

    kind: Literal["trace"]
    path: str
    format: TraceFormatName = "auto"
    on_error: Literal["raise", "skip"] = "raise"
    trace_filter: str | None = None
    window: tuple[NonNegative, PositiveFloat] | None = None
    rebase: bool = True
    sample: Annotated[float, Field(gt=0, le=1)] = 1.0
    jitter_s: NonNegative = 0.0
    """Spread each arrival uniformly over [t, t + jitter_s) (in trace time): undoes timestamp quantization."""
    time_scale: PositiveFloat = 1.0
    rate_scale: PositiveFloat = 1.0
    limit: PositiveInt | None = None

    @field_validator("window")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[1] <= v[0]:
            raise ValueError("window end must be after its start")
        return v


Source = Annotated[TraceSource | PoissonSource | GammaSource | DiurnalSource | SpikeSource, Field(discriminator="kind")]


class SessionConfig(_Model):
    """continue_prob: chance a request continues one of its tenant's `recent` newest sessions (0: no sessions)."""

    continue_prob: Annotated[float, Field(ge=0, lt=1)] = 0.0
    recent: PositiveInt = 16


class PrefixConfig(_Model):
    """Synthetic prefix blocks: a per-tenant system prompt of `system_blocks` blocks, then session blocks."""

    system_blocks: Annotated[int, Field(ge=0)] = 4
    block_tokens: PositiveInt | None = None
    """Tokens per block; default 16, or the trace's block size (512 for Mooncake) when a source has blocks."""


class WorkloadConfig(_Model):
    """One or more sources merged by arrival time, then labelled with model, priority, tenant, session."""

    sources: Annotated[list[Source], Field(min_length=1)]
    models: Weights | None = None
    priorities: PriorityWeights | None = None
    tenants: Weights | None = None
    sessions: SessionConfig = SessionConfig()
    prefix: PrefixConfig | None = None
    max_requests: PositiveInt | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> WorkloadConfig:
        names = [s.name for s in self.sources if s.name is not None]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique (they name the random streams): {dup}")
        return self
