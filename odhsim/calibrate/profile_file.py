"""The calibrated profile file a scenario model names (`profile: {file: calib/chat.json}`): what `odhsim calibrate`
measured on one machine, in the simulator's own terms.

An `llm` profile holds LatencyModel coefficients fitted on the live engine's steps plus the engine's cache size; a
`fixed` profile holds the service time of one forward pass by batch size and the dynamic batcher's limits. Both
hold the overheads outside the engine (HTTP, tokenising, streaming, the gateway's routing), the CPU slowdown
measured when several replica processes compute at once, and their provenance (machine, device, date, grid,
held-out error), so a reader knows what the numbers stand for. Errors name the file and the field.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from odhsim.errors import OdhsimError
from odhsim.profiles.coefficients import LatencyModel

FORMAT = "odhsim-calibrated-profile/1"
NonNeg = Annotated[float, Field(ge=0.0)]


class ProfileFileError(OdhsimError):
    """A profile file is missing, not JSON, or a field is invalid; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StepCoefficients(_Frozen):
    """LatencyModel's coefficients (seconds): a step costs prefill_s(tokens) + decode_step_s(batch, context)."""

    prefill_base_s: NonNeg
    prefill_per_token_s: NonNeg
    prefill_per_token_sq_s: NonNeg = 0.0
    decode_base_s: NonNeg
    decode_per_seq_s: NonNeg
    decode_per_context_token_s: NonNeg = 0.0
    prefill_knee_tokens: Annotated[int, Field(ge=0)] = 0
    prefill_per_token_above_knee_s: NonNeg = 0.0

    @model_validator(mode="after")
    def _decode_takes_time(self) -> StepCoefficients:
        if self.decode_base_s + self.decode_per_seq_s <= 0.0:
            raise ValueError("decode_base_s + decode_per_seq_s must be > 0 (a decode step takes time)")
        return self


class EngineSize(_Frozen):
    """What sizes the simulated engine: its KV cache in tokens (the live engine's slot cache: max_num_seqs x
    max_model_len), its longest context, bytes per cached token and the weights' size (download time)."""

    kv_capacity_tokens: Annotated[int, Field(ge=1)]
    max_context: Annotated[int, Field(ge=2)]
    kv_bytes_per_token: Annotated[int, Field(ge=1)] = 1
    weight_bytes: Annotated[int, Field(ge=1)] = 1


class Batching(_Frozen):
    """A fixed model's dynamic batcher: one forward pass at a time, of up to max_batch_size rows, closed
    max_batch_delay_ms after the batcher found a request waiting (runtime/models/dynamic_batching.py)."""

    service_time_s_by_batch: dict[int, Annotated[float, Field(gt=0.0)]]
    max_batch_size: Annotated[int, Field(ge=1)]
    max_batch_delay_ms: NonNeg

    @model_validator(mode="after")
    def _has_one(self) -> Batching:
        if not self.service_time_s_by_batch or min(self.service_time_s_by_batch) < 1:
            raise ValueError("service_time_s_by_batch needs batch sizes >= 1 (at least one)")
        return self

    @cached_property
    def _points(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        sizes = tuple(sorted(self.service_time_s_by_batch))
        return sizes, tuple(self.service_time_s_by_batch[b] for b in sizes)

    def service_s(self, batch: int) -> float:
        """One forward pass of `batch` rows: linear between measured sizes, the end slope beyond them."""
        xs, ys = self._points
        if len(xs) == 1:
            return ys[0] * batch / xs[0] if batch > xs[0] else ys[0]
        if batch <= xs[0]:
            return ys[0]
        i = next((k for k in range(1, len(xs)) if xs[k] >= batch), len(xs) - 1)
        slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
        return max(ys[i - 1] + slope * (batch - xs[i - 1]), 1e-9)


class Overheads(_Frozen):
    """Time outside the engine, measured against a real gateway and replica on 127.0.0.1: request_s is added to
    every answer's first token (HTTP in and out, tokenising, authentication, routing), per_token_s to its end for
    each output token after the first. step_s + step_per_seq_s * batch is what the live replica adds to each decode
    step beyond the engine's own pass (its event loop streaming the tokens and handing the next step to the worker
    thread), measured from the token cadence of 1, 4 and 8 requests decoding together; the simulator adds it to
    every decode step (`CalibratedProfile.latency_model`), so it slows the engine as it does live. prefill_step_s
    is what the serving replica's prefill step takes beyond the in-process grid's (its event loop receiving,
    tokenising and answering the new request while the step runs, measured from the probes' served steps:
    odhsim.calibrate.served); the simulator adds it to every prefill step. Files written before it read it as 0."""

    request_s: NonNeg = 0.0
    per_token_s: NonNeg = 0.0
    step_s: NonNeg = 0.0
    step_per_seq_s: NonNeg = 0.0
    prefill_step_s: NonNeg = 0.0

    @property
    def active(self) -> bool:
        return self.request_s > 0.0 or self.per_token_s > 0.0


class CpuShare(_Frozen):
    """What replica processes sharing a machine's cores cost each other, measured by timing the engine in 1..n
    processes at once: each busy replica beyond `cores` slows every busy one by `slowdown_per_extra_busy`
    (relative). `measured` keeps the raw ratios (busy processes -> step time over the one-process time).

    The cores are shared with more than the engines: the gateway and the client stream every token
    (`stream_cpu_per_token_s`, CPU seconds per token, measured from the probes: odhsim.calibrate.overheads), so a
    replica decoding a batch of b at step time t adds b x stream_cpu_per_token_s / t cores of demand; and other
    work on the machine takes `others_cores` (0 unless a run knows it: `odhsim fidelity` sets what it measured
    while the live run was served); each request adds `request_cpu_s` (CPU seconds per request) spread over the
    second after it arrives (odhsim.calibrate.cpu_model)."""

    cores: Annotated[int, Field(ge=1)]
    slowdown_per_extra_busy: NonNeg = 0.0
    measured: dict[int, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    stream_cpu_per_token_s: NonNeg = 0.0
    request_cpu_s: NonNeg = 0.0
    others_cores: NonNeg = 0.0

    def factor(self, busy: float) -> float:
        """Step-time factor when `busy` cores of demand (engines computing, plus their streams) run at once."""
        return 1.0 + self.slowdown_per_extra_busy * max(0.0, busy - (self.cores - self.others_cores))


class HeldOut(_Frozen):
    """Absolute percentage error of the fit on grid points it was not fitted on."""

    median_pct: NonNeg
    p90_pct: NonNeg
    points: Annotated[int, Field(ge=0)]


class Provenance(_Frozen):
    machine: str
    device: str
    date: str
    command: str = ""
    torch: str = ""
    grid: dict[str, Any] = Field(default_factory=dict)
    held_out: HeldOut | None = None
    probes: dict[str, Any] = Field(default_factory=dict)
    """What the overheads were read from (requests sent alone; the cadence of k requests decoding together)."""
    note: str = ""


class CalibratedProfile(_Frozen):
    """One model's calibrated profile (module doc). `llm`: `latency` and `engine`; `fixed`: `batching`."""

    format: Literal["odhsim-calibrated-profile/1"] = FORMAT
    model: str
    kind: Literal["llm", "fixed"]
    latency: StepCoefficients | None = None
    engine: EngineSize | None = None
    batching: Batching | None = None
    overheads: Overheads = Overheads()
    cpu: CpuShare | None = None
    live: dict[str, Any] = Field(default_factory=dict)
    """The live model spec it was measured on (the scenario's `live:` section), for the record."""
    provenance: Provenance

    @model_validator(mode="after")
    def _sections_of_kind(self) -> CalibratedProfile:
        need = ("latency", "engine") if self.kind == "llm" else ("batching",)
        banned = ("batching",) if self.kind == "llm" else ("latency", "engine")
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: required for kind {self.kind!r}")
        for name in banned:
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: not for kind {self.kind!r}")
        return self

    def latency_model(self, gpu: str) -> LatencyModel:
        """The simulator's per-iteration latency of this profile (source "calibrated"): the engine's fitted steps
        plus what the serving replica adds to each prefill and decode step (Overheads)."""
        assert self.latency is not None, "an llm profile"
        coef = self.latency.model_dump()
        coef["prefill_base_s"] += self.overheads.prefill_step_s
        coef["decode_base_s"] += self.overheads.step_s
        coef["decode_per_seq_s"] += self.overheads.step_per_seq_s
        return LatencyModel(model=self.model, gpu=gpu, tp=1, source="calibrated", **coef)


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def parse_profile(doc: Any, source: str) -> CalibratedProfile:
    """Validate a loaded profile document; errors name `source` and the field."""
    try:
        return CalibratedProfile.model_validate(doc)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            elif e["type"] == "missing":
                msg = "required field is missing"
            parts.append(f"{source}: {_field(tuple(e['loc']))}: {msg}")
        raise ProfileFileError("\n".join(parts)) from None


def load_profile(path: str | Path, base_dir: Path | None = None) -> CalibratedProfile:
    """Read a profile file (relative paths start at `base_dir`, the scenario file's folder)."""
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        raise ProfileFileError(f"{p}: no such profile file")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProfileFileError(f"{p}: not a JSON profile file ({err})") from None
    return parse_profile(doc, str(p))


def write_profile(profile: CalibratedProfile, path: str | Path) -> Path:
    """Write the profile as sorted JSON (whole file: temp file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = profile.model_dump(mode="json", exclude_none=True)
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)
    return p
