"""What a comparison's replicates vary, and so what its confidence intervals measure.

Two modes. `seeds`: replicate i runs seed i; for generated workloads each seed redraws the arrivals and token
lengths, so the interval measures workload and policy randomness. `windows` (for traces, which replay the same
arrivals under every seed): replicate i runs seed i on the i-th consecutive, non-overlapping window of every trace
source (batch means; why that and not a block bootstrap: `odhsim.workload.windows`). In both modes every variant
sees the same seed and window in replicate i, so the comparison stays paired (common random numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from odhsim.errors import ScenarioError
from odhsim.scenario.load import scenario_from_dict
from odhsim.scenario.model import Scenario
from odhsim.workload.config import TraceSource
from odhsim.workload.windows import WindowPlan, plan_windows, trace_spans, window_arrivals, windowed_workload

ReplicateMode = Literal["auto", "seeds", "windows"]
MODES: tuple[str, ...] = ("auto", "seeds", "windows")
TIE_BREAKING_ONLY = "intervals measure tie-breaking only: every replicate replays the same trace arrivals"


@dataclass(frozen=True)
class Replicates:
    """How replicate i was made (seed, and trace windows in windows mode) and what the intervals measure."""

    mode: Literal["seeds", "windows"]
    seeds: tuple[int, ...]
    description: str
    window_s: float | None = None
    windows: tuple[Mapping[str, tuple[float, float]], ...] = ()
    """Per replicate: the trace window (trace seconds) each trace source replays, keyed by its field path."""
    arrivals: tuple[int, ...] = ()
    """Per replicate (windows mode): the trace arrivals in its windows, before sample and limit."""
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "n": len(self.seeds),
            "seeds": list(self.seeds),
            "window_s": self.window_s,
            "windows": [{k: list(v) for k, v in w.items()} for w in self.windows],
            "arrivals": list(self.arrivals),
            "description": self.description,
            "warning": self.warning,
        }


def _seeds_text(seeds: Sequence[int]) -> str:
    n = len(seeds)
    return f"{n} replicate{'s' if n != 1 else ''} (seed{'s' if n != 1 else ''} {', '.join(map(str, seeds))})"


def resolve_mode(base: Scenario, mode: str) -> Literal["seeds", "windows"]:
    """`auto`: windows when any workload source is a trace, else seeds."""
    if mode not in MODES:
        raise ScenarioError(f"--replicates must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "windows" if any(isinstance(s, TraceSource) for s in base.workload.sources) else "seeds"
    return "windows" if mode == "windows" else "seeds"


def seed_replicates(base: Scenario, seeds: Sequence[int]) -> Replicates:
    """Replicates over seeds; a trace replayed whole gets a warning that says what the seeds do (not) vary."""
    traces = [(i, s) for i, s in enumerate(base.workload.sources) if isinstance(s, TraceSource)]
    if not traces:
        return Replicates(
            "seeds",
            tuple(seeds),
            f"seeds: {_seeds_text(seeds)}; each seed redraws the generated arrivals and token lengths: the "
            "interval measures workload + policy randomness",
        )
    redrawn = [f"jitter of workload.sources[{i}]" for i, s in traces if s.jitter_s > 0]
    redrawn += [f"sampling of workload.sources[{i}]" for i, s in traces if s.sample < 1]
    if len(traces) < len(base.workload.sources):
        redrawn.append("the generated sources")
    if redrawn:
        measured = f"the interval measures policy randomness and only the {', '.join(redrawn)}"
        warning = (
            "intervals leave out the trace's own variation: every replicate replays the same trace arrivals "
            f"(seeds redraw only the {', '.join(redrawn)}); use --replicates windows"
        )
    else:
        measured = "the interval measures tie-breaking only"
        warning = f"{TIE_BREAKING_ONLY}; use --replicates windows"
    return Replicates(
        "seeds",
        tuple(seeds),
        f"seeds: {_seeds_text(seeds)}, every one replaying the same trace arrivals: {measured}",
        warning=warning if len(seeds) > 1 else None,
    )


def window_plan(base: Scenario, seeds: Sequence[int], window_s: float | None) -> tuple[WindowPlan, Replicates]:
    """One trace window per seed (consecutive, non-overlapping), and the description of what that measures."""
    spans = trace_spans(base.workload, base.base_dir)
    if not spans:
        raise ScenarioError("--replicates windows needs a trace source in the workload; this one only generates")
    run_length = base.duration_s
    plan = plan_windows(spans, len(seeds), window_s, run_length)
    windows = tuple({f"workload.sources[{s.index}]": plan.window(s, i) for s in plan.spans} for i in range(len(seeds)))
    arrivals = window_arrivals(base.workload, base.base_dir, plan)
    first = plan.spans[0]
    described = (
        f"windows: {_seeds_text(seeds)}, replicate i replaying trace seconds "
        f"[{first.start_s:g} + i*{plan.window_s:g}, {first.start_s:g} + (i+1)*{plan.window_s:g}) "
        f"(N={len(seeds)} consecutive non-overlapping windows of W={plan.window_s:g} s, batch means; "
        f"{', '.join(map(str, arrivals))} trace arrivals): the interval measures the traffic's variation between "
        "windows + policy randomness"
    )
    empty = [i for i, n in enumerate(arrivals) if n == 0]
    warning = None
    if empty:
        warning = (
            f"replicate window{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} of {plan.window_s:g} s "
            "hold no trace arrivals (the trace has quiet gaps): their metrics are NaN and drop out of the "
            "intervals; give a longer --window-s"
        )
    return plan, Replicates(
        "windows",
        tuple(seeds),
        described,
        window_s=plan.window_s,
        windows=windows,
        arrivals=tuple(arrivals),
        warning=warning,
    )


def windowed_scenario(sc: Scenario, plan: WindowPlan, i: int, where: str) -> Scenario:
    """`sc` with its trace sources cut to window i; duration_s becomes the window's simulated length (and a
    hard_stop_s keeps its drain time after it). Validated again, so an action past the window is an error."""
    data = sc.model_dump(mode="json")
    data["workload"] = windowed_workload(sc.workload, plan, i).model_dump(mode="json")
    length = plan.sim_length_s
    if sc.hard_stop_s is not None:  # the same drain time after the window; without a duration, the same cap
        drain_end = length + sc.hard_stop_s - sc.duration_s if sc.duration_s is not None else sc.hard_stop_s
        data["hard_stop_s"] = max(drain_end, length)
    data["duration_s"] = length
    try:
        return scenario_from_dict(data, source=where, base_dir=sc.base_dir)
    except ScenarioError as err:
        raise ScenarioError(f"replicate window {i} ({plan.window_s:g} s of trace): {err}") from None
