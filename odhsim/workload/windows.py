"""Replicates of a trace workload that vary the workload: consecutive, non-overlapping windows of the trace.

Why: a trace source replays the same arrivals under every seed, so replicates over seeds measure only the
simulator's tie-breaking (plus any jitter or sampling), not how the result would change on other traffic. Here
replicate i replays trace seconds [a + i*W, a + (i+1)*W) of every trace source instead, where `a` is the source's
`window` start (0 without one): the method of non-overlapping batch means (Conway 1963, "Some tactical problems
in digital simulation", Management Science 10(1); Law & Kelton, "Simulation Modeling and Analysis", ch. 9.5.3;
Schmeiser 1982, "Batch size effects in the analysis of simulation output", Operations Research 30(3)).

Chosen over a moving-block bootstrap of windows (Kunsch 1989, Annals of Statistics 17(3)) because each replicate
is a whole simulation here: the bootstrap needs hundreds of resamples for a percentile interval, its overlapping
blocks share arrivals (replicates are not independent), and a resample glues blocks together at joins where the
traffic never continued that way. Batch means gives N replicates that share no arrival, are close to independent
when W is long against the trace's correlation time, and feed the paired t-interval compare already uses (the
batch-means t-interval) unchanged; every window is real traffic as it happened. What the interval then includes:
the variation of the traffic from one stretch of the trace to the next (for a trace with a daily shape, also that
shape), and every window starts from an empty system, as a run of the whole trace does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odhsim.errors import ScenarioError
from odhsim.workload.build import resolve_trace_path
from odhsim.workload.config import TraceSource, WorkloadConfig
from odhsim.workload.loaders import open_trace

__all__ = ["TraceSpan", "WindowPlan", "plan_windows", "trace_spans", "window_arrivals", "windowed_workload"]


@dataclass(frozen=True)
class TraceSpan:
    """The stretch of one trace source that replicates may replay, in trace seconds, and how it maps to sim time."""

    index: int
    """Position of the source in `workload.sources`."""
    start_s: float
    end_s: float
    scale: float
    """Simulated seconds per trace second: time_scale / rate_scale."""
    offset_s: float
    """The source's start_s: where its arrivals begin in simulated time."""

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class WindowPlan:
    """N windows of `window_s` trace seconds; replicate i replays [span.start_s + i*W, span.start_s + (i+1)*W)."""

    window_s: float
    replicates: int
    spans: tuple[TraceSpan, ...]

    def window(self, span: TraceSpan, i: int) -> tuple[float, float]:
        return span.start_s + i * self.window_s, span.start_s + (i + 1) * self.window_s

    @property
    def sim_length_s(self) -> float:
        """Simulated seconds one window's arrivals span (the latest-ending trace source)."""
        return max(s.offset_s + self.window_s * s.scale for s in self.spans)


def _arrival_chunks(src: TraceSource, base_dir: Path, where: str) -> Iterator[np.ndarray]:
    """The trace's arrival times (seconds since its first kept request), chunk by chunk: one pass over the file."""
    path = resolve_trace_path(src.path, base_dir, where)
    reader = open_trace(path, src.format, on_error=src.on_error, trace_filter=src.trace_filter)
    return (b.arrival_s for b in reader.batches() if len(b))


def _last_arrival(src: TraceSource, base_dir: Path, where: str) -> float:
    last = 0.0
    for arrivals in _arrival_chunks(src, base_dir, where):
        last = float(arrivals[-1])
    return last


def window_arrivals(cfg: WorkloadConfig, base_dir: Path, plan: WindowPlan) -> list[int]:
    """Trace arrivals in each replicate's window, summed over the trace sources (before sample and limit): a
    trace with quiet gaps can leave a short window empty, and the user should hear of it."""
    counts = np.zeros(plan.replicates, np.int64)
    for span in plan.spans:
        src = cfg.sources[span.index]
        if not isinstance(src, TraceSource):
            raise ValueError(f"workload.sources[{span.index}] is not a trace source: the plan is for another workload")
        edges = span.start_s + plan.window_s * np.arange(plan.replicates + 1)
        for arrivals in _arrival_chunks(src, base_dir, f"workload.sources[{span.index}].path"):
            counts += np.diff(np.searchsorted(arrivals, edges, side="left"))
    return [int(c) for c in counts]


def trace_spans(cfg: WorkloadConfig, base_dir: Path) -> list[TraceSpan]:
    """Each trace source's replayable stretch: its `window` if it has one (cut at the trace's end), else the
    whole trace. Empty when the workload has no trace source."""
    spans = []
    for i, src in enumerate(cfg.sources):
        if not isinstance(src, TraceSource):
            continue
        where = f"workload.sources[{i}].path"
        last = _last_arrival(src, base_dir, where)
        start, end = src.window if src.window is not None else (0.0, last)
        end = min(end, last)
        if end <= start:
            raise ScenarioError(
                f"workload.sources[{i}]: its window [{start:g}, {src.window[1] if src.window else end:g}) s holds "
                f"no arrivals (the trace ends at {last:g} s), so it has no windows to replicate over"
            )
        spans.append(TraceSpan(i, float(start), float(end), src.time_scale / src.rate_scale, src.start_s))
    return spans


def plan_windows(
    spans: Sequence[TraceSpan], replicates: int, window_s: float | None, run_length_s: float | None
) -> WindowPlan:
    """N consecutive windows that fit in every trace source's stretch.

    `window_s` None: the trace length one run of the scenario replays (`run_length_s`, its duration_s, in trace
    seconds of the slowest-scaled source), shortened so that N windows fit; an explicit `window_s` must fit N times.
    """
    if not spans:
        raise ScenarioError("replicates over windows need a trace source in the workload; use seeds")
    if replicates < 1:
        raise ScenarioError(f"give at least one replicate, got {replicates}")
    room = min(s.length_s for s in spans)
    if window_s is None:
        window_s = room / replicates
        if run_length_s is not None:
            window_s = min(window_s, min((run_length_s - s.offset_s) / s.scale for s in spans))
        if window_s <= 0:
            raise ScenarioError("the scenario's duration_s ends before its trace sources start: no window to replay")
    elif window_s <= 0:
        raise ScenarioError(f"--window-s must be positive, got {window_s:g}")
    elif replicates * window_s > room * (1 + 1e-9):
        tight = min(spans, key=lambda s: s.length_s)
        raise ScenarioError(
            f"{replicates} windows of {window_s:g} s need {replicates * window_s:g} s of trace, but "
            f"workload.sources[{tight.index}] has {room:g} s ([{tight.start_s:g}, {tight.end_s:g}) s); give a "
            f"shorter --window-s (at most {room / replicates:g}) or fewer replicates"
        )
    return WindowPlan(float(window_s), replicates, tuple(spans))


def windowed_workload(cfg: WorkloadConfig, plan: WindowPlan, i: int) -> WorkloadConfig:
    """The workload with every trace source cut to replicate i's window, rebased so it starts at its start_s."""
    sources = list(cfg.sources)
    for span in plan.spans:
        sources[span.index] = sources[span.index].model_copy(update={"window": plan.window(span, i), "rebase": True})
    return cfg.model_copy(update={"sources": sources})
