"""Checks on a scenario beyond its schema: numbers that must be finite, and settings that are valid but costly.

Why apart from the models: a non-finite number can hide in any section (policy params are free-form dicts), so
one walk over the whole tree finds it; and a warning (a duration of years, ten million requests) is not an error,
so `validation_warnings` returns text for the CLI to print before a run instead of refusing the scenario.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel

from odhsim.scenario.model import Scenario
from odhsim.workload.config import SpikeSource, TraceSource

Loc = tuple[int | str, ...]

LONG_DURATION_S = 7 * 86_400.0
"""A duration_s beyond a week of simulated time earns a warning: the run simulates (and samples the timeseries)
until duration_s even when arrivals stop earlier, so its cost grows with the duration, not the request count."""
MANY_REQUESTS = 10_000_000
"""Above this many expected requests a warning says so: the request table alone then takes gigabytes."""
MAX_REQUESTS = 1e10
"""Above this many expected requests (or when rates x durations overflow) a scenario is refused: at the simulator's
speed it would run for months and its request table would not fit in memory; workload.max_requests caps it."""


def non_finite(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, float]]:
    """Every float in `value` (dicts, lists, tuples, pydantic models, nested) that is inf or NaN, with its path."""
    if isinstance(value, bool | int | str) or value is None:
        return
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            yield loc, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from non_finite(v, (*loc, k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from non_finite(v, (*loc, i))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from non_finite(getattr(value, name), (*loc, name))


NON_FINITE_HINT = "is not a finite number; give a finite value (null, where a field allows it, means no limit)"


def expected_requests(scenario: Scenario) -> tuple[float, int, float]:
    """(requests the synthetic sources are expected to send before duration_s, trace sources of unknown size,
    when the last synthetic arrival is expected in seconds). Mean rates: a diurnal source averages its `rate`."""
    cfg, stop = scenario.workload, scenario.duration_s if scenario.duration_s is not None else math.inf
    total, unknown, last = 0.0, 0, 0.0
    for src in cfg.sources:
        if isinstance(src, TraceSource):
            if src.limit is None:
                unknown += 1
            else:
                total += src.limit
            continue
        if isinstance(src, SpikeSource):
            inside = min(max(stop - src.start_s, 0.0), src.length_s) / src.length_s
            total += src.requests * inside
            last = max(last, min(stop, src.start_s + src.length_s)) if inside else last
            continue
        own_end = src.start_s + src.duration_s if src.duration_s is not None else math.inf
        if src.requests is not None:
            own_end = min(own_end, src.start_s + src.requests / src.rate)
        end = min(own_end, stop)
        span = max(end - src.start_s, 0.0)
        total += src.rate * span
        last = max(last, end if span else 0.0)
    if cfg.max_requests is not None:
        total = min(total, float(cfg.max_requests))
    return total, unknown, last


def _count(value: float) -> str:
    """A count for a message: grouped digits up to a trillion, scientific notation beyond (1e308 has 309 digits)."""
    return f"{value:,.0f}" if value < 1e12 else f"{value:.3g}"


def _human_span(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86_400), ("days", 86_400.0), ("hours", 3_600.0)):
        if seconds >= size:
            return f"{_count(seconds / size) if seconds / size >= 1e12 else format(seconds / size, ',.1f')} {unit}"
    return f"{seconds:,.0f} s"


def unbounded_workload(scenario: Scenario) -> str | None:
    """Why the workload can never finish (more than MAX_REQUESTS expected, or an overflow), or None."""
    count, _, _ = expected_requests(scenario)
    if math.isfinite(count) and count <= MAX_REQUESTS:
        return None
    about = f"about {_count(count)} requests expected" if math.isfinite(count) else "rates x durations overflow"
    return (
        f"workload: {about}, more than the {MAX_REQUESTS:.0e} requests a run can finish; lower the rates or "
        "duration_s, or cap the run with workload.max_requests"
    )


def validation_warnings(scenario: Scenario) -> list[str]:
    """Valid settings that make a run very long or very large, each as one line naming the field; [] when none."""
    out: list[str] = []
    count, unknown, last = expected_requests(scenario)
    traces = f" plus the rows of {unknown} trace source(s)" if unknown else ""
    d = scenario.duration_s
    if d is not None and d > LONG_DURATION_S:
        buckets = d / scenario.outputs.timeseries_bucket_s
        ends = f"; arrivals end at about {last:,.0f} s but the run goes on to duration_s" if last < d / 2 else ""
        out.append(
            f"duration_s: {d:g} s ({_human_span(d)} of simulated time): about {_count(count)} requests expected"
            f"{traces}, {_count(buckets)} timeseries buckets of {scenario.outputs.timeseries_bucket_s:g} s (a row per"
            f" bucket and model is kept in memory; a larger outputs.timeseries_bucket_s keeps fewer){ends}"
        )
    if count > MANY_REQUESTS:
        out.append(
            f"workload: about {_count(count)} requests expected{traces} (more than {MANY_REQUESTS:,}); "
            "lower duration_s or the rates, or set workload.max_requests"
        )
    return out


LIVE_ONE_REVISION = "canary: the live engine serves one revision"


LIVE_FAULT_REFUSALS = {
    "node_failure": "the live engine runs on one machine: no node can fail without taking the gateway with it "
    "(live.devices groups could stand for nodes, but taking a group's slots out is not built); use replica_crash",
    "download_failure": "live replicas build or read their weights locally (live: lm/mlp/cnn): no storage download",
    "download_timeout": "live replicas build or read their weights locally (live: lm/mlp/cnn): no storage download",
}
"""Fault kinds `odhsim serve` cannot inject for real (runtime.faults injects the others), and why."""


def live_refusals(scenario: Scenario) -> list[str]:
    """What `odhsim serve` refuses to run, one line per cause naming the field; [] when the live engine can serve
    the scenario as the simulator would. A canary rollout is simulated only: the live controller runs one revision
    per model, so serving it would silently drop the split the scenario asks for. A fault the live engine cannot
    inject is refused too, rather than silently not injected."""
    refused = [
        f"models.{i}.canary (model '{m.name}', version {m.canary.version}): {LIVE_ONE_REVISION}"
        for i, m in enumerate(scenario.models)
        if m.canary is not None
    ]
    refused += [
        f"faults.{i} ({f.label(i)}): {f.kind}: {LIVE_FAULT_REFUSALS[f.kind]}"
        for i, f in enumerate(scenario.faults)
        if f.kind in LIVE_FAULT_REFUSALS
    ]
    return refused
