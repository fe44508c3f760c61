"""The highest arrival rate a configuration (a fleet serving one model) sustains within its SLOs.

Each probe simulates the fleet fed the scenario's workload scaled to a rate (odhsim.experiments.fleet), always with
the same workload seed (common random numbers: two rates differ in their arrival times, not in an independent draw
of lengths, priorities and burst pattern), and judges it against the SLOs given (`ttft_p99=2`: the 99th percentile
of time to first token at most 2 s; a request that did not finish ok counts as infinitely late) or, without any,
the scenario's per-class `slos` at p99 (odhsim.experiments.slo). The search doubles (or halves) the rate from the
scenario's own until it brackets the answer, then bisects the bracket at its geometric mean
(`policies.cost.rightsizing.max_rate_meeting_slo`) until the highest rate met and the lowest missed are within
`rel_tol` of each other: the true capacity lies in [rate, failing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from odhsim.errors import OdhsimError
from odhsim.experiments.fleet import Fleet, FleetJob, fleet_scenario
from odhsim.experiments.slo import meets_slos
from odhsim.results.summary import latency_columns
from odhsim.scenario.model import Slo
from policies.cost.rightsizing import max_rate_meeting_slo

METRICS = ("ttft", "tpot", "e2e")
PLOT_PERCENTILES = (50.0, 99.0)
MAX_DOUBLINGS = 12


class SloSpecError(OdhsimError):
    """An --slo that does not parse."""


@dataclass(frozen=True)
class SloSpec:
    """`metric_pNN=seconds`: the NN-th percentile of `metric` (ttft, tpot, e2e) at most `limit_s`."""

    metric: str
    percentile: float
    limit_s: float

    @property
    def name(self) -> str:
        return f"{self.metric}_p{self.percentile:g}"

    @classmethod
    def parse(cls, text: str) -> SloSpec:
        m = re.fullmatch(r"\s*(\w+?)_p(\d+(?:\.\d+)?)\s*=\s*([0-9.eE+-]+)\s*", text)
        if m is None or m.group(1) not in METRICS:
            raise SloSpecError(f"--slo {text!r}: expected METRIC_pNN=SECONDS with METRIC one of {', '.join(METRICS)}"
                               ", e.g. ttft_p99=2")  # fmt: skip
        pct = float(m.group(2))
        try:
            limit = float(m.group(3))
        except ValueError:
            limit = math.nan
        if not 0 < pct <= 100 or not limit > 0 or not math.isfinite(limit):
            raise SloSpecError(f"--slo {text!r}: need 0 < percentile <= 100 and a positive number of seconds")
        return cls(m.group(1), pct, limit)


def percentile_s(requests: pd.DataFrame, metric: str, percentile: float) -> float:
    """The percentile of a latency over every request, those that did not finish ok counted as infinitely late."""
    if not len(requests):
        return math.nan
    v = latency_columns(requests)[f"{metric}_s"].to_numpy(dtype=float)
    ok = (requests["status"] == "ok").to_numpy()
    if metric == "tpot":  # single-token answers have no TPOT: leave them out unless they failed
        keep = ~ok | np.isfinite(v)
        v, ok = v[keep], ok[keep]
    v = np.where(ok, v, np.inf)
    return float(np.percentile(v, percentile, method="higher")) if len(v) else math.nan


@dataclass(frozen=True)
class Probe:
    """One simulation at one rate: the latencies the plot shows and the verdict."""

    rate_rps: float
    meets: bool
    requests: int
    latency_s: Mapping[str, float]  # e.g. ttft_p50, ttft_p99, e2e_p99 and each SLO's own percentile


def probe(template: FleetJob, rate: float, slos: Sequence[SloSpec], class_slos: Mapping[str, Slo]) -> Probe:
    """Simulate the template's fleet at `rate` and judge it (module doc)."""
    from odhsim.sim.run import simulate

    job = replace(template, rate_rps=rate)
    req = simulate(fleet_scenario(job)).requests
    lat = {f"{m}_p{p:g}": percentile_s(req, m, p) for m in METRICS for p in PLOT_PERCENTILES}
    lat |= {s.name: percentile_s(req, s.metric, s.percentile) for s in slos}
    meets = all(lat[s.name] <= s.limit_s for s in slos) if slos else meets_slos(req, class_slos)
    return Probe(rate, meets, len(req), lat)


@dataclass(frozen=True)
class CapacityJob:
    """Search the highest rate `template.fleet` sustains; `label` names the configuration."""

    label: str
    template: FleetJob
    slos: tuple[SloSpec, ...]
    rel_tol: float = 0.05
    max_probes: int = 14


@dataclass(frozen=True)
class CapacityResult:
    label: str
    fleet: Fleet
    rate_rps: float  # highest rate seen to meet the SLOs (0: not even the lowest probed)
    failing_rps: float  # lowest rate seen to miss them (inf: none missed up to the doubling limit)
    rel_tol: float
    converged: bool
    probes: tuple[Probe, ...]  # in the order simulated

    @property
    def usd_per_hour(self) -> float:
        return self.fleet.usd_per_hour

    def row(self) -> dict[str, object]:
        return {
            "configuration": self.label, "fleet": self.fleet.label, "max_rate_rps": self.rate_rps,
            "failing_rps": self.failing_rps, "rel_tol": self.rel_tol, "converged": self.converged,
            "probes": len(self.probes), "usd_per_hour": self.usd_per_hour,
            "usd_per_hour_per_rps": self.usd_per_hour / self.rate_rps if self.rate_rps > 0 else math.nan,
        }  # fmt: skip

    def probe_rows(self) -> list[dict[str, object]]:
        return [{"configuration": self.label, "rate_rps": p.rate_rps, "meets_slos": p.meets, "requests": p.requests,
                 **p.latency_s} for p in sorted(self.probes, key=lambda p: p.rate_rps)]  # fmt: skip


def search_capacity(job: CapacityJob) -> CapacityResult:
    """One configuration's search, serially in one worker (module doc). Top level, so executors can ship it."""
    t = job.template
    class_slos = t.scenario.slos
    seen: dict[float, Probe] = {}

    def meets(rate: float) -> bool:
        key = float(f"{rate:.12g}")  # the bisection's floor is lo / hi * hi: the same rate, up to rounding
        if key not in seen:
            seen[key] = probe(t, rate, job.slos, class_slos)
        return seen[key].meets

    base = t.base_rate_rps
    lo, hi = base, math.inf  # bracket: highest met (0 if none), lowest missed
    if meets(base):
        for _ in range(MAX_DOUBLINGS):
            if not meets(lo * 2):
                hi = lo * 2
                break
            lo *= 2
    else:
        hi, lo = base, 0.0
        for _ in range(MAX_DOUBLINGS):
            if meets(hi / 2):
                lo = hi / 2
                break
            hi /= 2
    if lo > 0 and math.isfinite(hi):
        budget = max(1, job.max_probes - len(seen) + 1)  # the floor (lo) is already known: not spent again
        found = max_rate_meeting_slo(meets, hi, rel_tol=job.rel_tol, floor_fraction=lo / hi, max_probes=budget)
        lo, hi = found.rate, found.failing
    converged = lo > 0 and math.isfinite(hi) and hi / lo <= 1.0 + job.rel_tol + 1e-12
    return CapacityResult(job.label, t.fleet, lo, hi, job.rel_tol, converged, tuple(seen.values()))
