"""The one request list both engines see at a given load, and the scenario that replays it.

A base list (the scenario's own workload, or a trace file) has its token counts fitted to what the live model
takes (divided by `length_scale`, clipped to `live.limits` and to the LM's context) and its arrivals stretched or
squeezed to the asked rate (a Poisson process stays Poisson, a trace keeps its burstiness), then is written as a
plain CSV trace. The fidelity scenario is the original with that CSV as its only source: `odhsim run` and the live
replay then build the same requests from it (same seed, same streams for model, priority and tenant)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from odhsim.errors import OdhsimError
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from odhsim.workload.build import build_workload
from odhsim.workload.config import TraceSource, WorkloadConfig
from odhsim.workload.loaders import open_trace

MAX_BASE_REQUESTS = 200_000


class WorkloadError(OdhsimError):
    """A fidelity workload cannot be built (empty trace, bad rate); the message names the source."""


@dataclass(frozen=True, eq=False)
class Requests:
    """Arrival times (s, from 0) and token counts of a request list, and where it came from."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate: (n - 1) requests over the span from the first arrival to the last."""
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0
        return (len(self) - 1) / span if span > 0 else float("nan")


def scenario_requests(scenario: Scenario, limit: int = MAX_BASE_REQUESTS) -> Requests:
    """The scenario's own workload, as the simulator builds it (its seed, its streams)."""
    wl = build_workload(
        scenario.workload, model_names=[m.name for m in scenario.models], streams=RngStreams(scenario.seed),
        base_dir=scenario.base_dir,
    )  # fmt: skip
    parts, n = [], 0
    for b in wl.batches():
        parts.append((b.arrival_s, b.prompt_tokens, b.output_tokens))
        n += len(b)
        if n >= limit:
            break
    return _joined(parts, limit, f"{scenario.name}'s workload")


def trace_requests(path: str | Path, limit: int, skip_s: float = 0.0) -> Requests:
    """The first `limit` requests of a trace file from `skip_s` trace seconds on (any format odhsim reads)."""
    reader = open_trace(path, chunk_rows=max(1024, min(limit, 65_536)))
    parts, n = [], 0
    for b in reader.batches():
        keep = b.arrival_s >= skip_s
        parts.append((b.arrival_s[keep], b.prompt_tokens[keep], b.output_tokens[keep]))
        n += int(keep.sum())
        if n >= limit:
            break
    return _joined(parts, limit, f"{Path(path).name} (from {skip_s:g} s)")


def _joined(parts: list[tuple[np.ndarray, ...]], limit: int, source: str) -> Requests:
    if not parts or sum(len(p[0]) for p in parts) == 0:
        raise WorkloadError(f"{source}: no requests")
    arrival, prompt, output = (np.concatenate([p[i] for p in parts])[:limit] for i in range(3))
    return Requests(arrival - arrival[0], prompt.astype(np.int64), output.astype(np.int64), source)


def fit_lengths(
    req: Requests, *, max_prompt: int, max_output: int, max_model_len: int | None, length_scale: float = 1.0
) -> Requests:
    """Token counts divided by `length_scale`, clipped to the live limits and, together, to the LM's context."""
    if length_scale <= 0:
        raise WorkloadError(f"length scale must be > 0, got {length_scale}")
    prompt = np.clip(np.round(req.prompt_tokens / length_scale), 2, max_prompt).astype(np.int64)
    output = np.clip(np.round(req.output_tokens / length_scale), 1, max_output).astype(np.int64)
    if max_model_len is not None:
        prompt = np.minimum(prompt, max_model_len - 1)
        output = np.clip(np.minimum(output, max_model_len - prompt), 1, None)
    label = f"{req.source}, tokens / {length_scale:g}" if length_scale != 1 else req.source
    return Requests(req.arrival_s, prompt, output, label)


def at_rate(req: Requests, rate_rps: float, duration_s: float) -> Requests:
    """Arrivals scaled so the mean rate is `rate_rps`, cut at `duration_s` (the base list must be long enough)."""
    if not rate_rps > 0:
        raise WorkloadError(f"rate must be > 0 req/s, got {rate_rps}")
    base = req.rate_rps
    if not base > 0:
        raise WorkloadError(f"{req.source}: fewer than two distinct arrival times, no rate to scale")
    arrival = req.arrival_s * (base / rate_rps)
    keep = arrival < duration_s
    if arrival[-1] < duration_s * 0.95:
        raise WorkloadError(
            f"{req.source}: {len(req)} requests last {arrival[-1]:.1f} s at {rate_rps:g} req/s, "
            f"less than the {duration_s:g} s asked (give a longer source or a shorter duration)"
        )
    return Requests(arrival[keep], req.prompt_tokens[keep], req.output_tokens[keep], req.source)


def write_trace(req: Requests, path: str | Path) -> Path:
    """A plain `arrival_s,prompt_tokens,output_tokens` CSV (odhsim's csv trace format)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "arrival_s": np.round(req.arrival_s, 6),
            "prompt_tokens": req.prompt_tokens,
            "output_tokens": req.output_tokens,
        }
    )
    frame.to_csv(out, index=False)
    return out


def replaying(scenario: Scenario, trace: Path, duration_s: float) -> Scenario:
    """The scenario with `trace` as its only workload source (models, priorities and tenants weighted as before)
    and arrivals ending at `duration_s`; relative paths still resolve against the original file's folder."""
    source = TraceSource(kind="trace", path=str(trace.resolve()), format="csv", name="fidelity")
    workload = WorkloadConfig.model_validate({**scenario.workload.model_dump(), "sources": [source.model_dump()]})
    return scenario.model_copy(update={"workload": workload, "duration_s": duration_s})


def repeated(req: Requests, rate_rps: float, duration_s: float) -> Requests:
    """The list repeated end to end (each copy after the previous one's last arrival plus a mean gap) until it
    lasts `duration_s` at `rate_rps`: a generated workload's statistics are kept; a trace's too, copy by copy."""
    base = req.rate_rps
    if not base > 0:
        return req
    need_s = duration_s * rate_rps / base  # base seconds the rescaled list must cover
    span = float(req.arrival_s[-1]) + 1.0 / base
    copies = math.ceil(need_s / span) + 1 if span < need_s * 1.05 else 1
    if copies == 1:
        return req
    offsets = np.repeat(np.arange(copies) * span, len(req))
    return Requests(
        np.tile(req.arrival_s, copies) + offsets,
        np.tile(req.prompt_tokens, copies),
        np.tile(req.output_tokens, copies),
        f"{req.source}, repeated x{copies}",
    )
