"""The cost report of a run: what each model cost, what it would have cost always-on at its peak, the GPU-hours
allocated while idle, and right-sizing: the cheapest fleet that serves each LLM's traffic within the SLOs.

Right-sizing sizes for the rate the user asks for (`--rate`), or without one for the model's mean arrival rate
in the run (the report says which), and searches by simulating whole fleets at that rate
(odhsim.experiments.capacity: per GPU option the fewest replicas meeting the SLOs, then two-type mixes, then a
verification run of the pick on fresh arrivals). It no longer sizes a fleet by dividing a rate by one replica's
SLO throughput: a lone replica's p99 at rate r is far worse than N pooled replicas' at N r, so that rating was not
additive and over-provisioned; nor for the p95 of 10-second buckets, which is a burst, not the rate asked.

`slo_throughput` still measures one replica's highest rate within the SLOs (bisection below its saturation,
common random numbers): a property of the option, shown as such, not a sizing rule.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from odhsim import catalog
from odhsim.experiments.capacity import CapacityError, Recommendation, rightsize_model
from odhsim.experiments.slo import meets_slos, slo_ratios  # noqa: F401 (slo_ratios: re-exported)
from odhsim.results.run_result import RunResult
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario, Slo
from policies.cost.rightsizing import RateSearch, max_rate_meeting_slo

SLO_PERCENTILE = 99.0
SEARCH_DURATION_S = 300.0
"""Longest run of one search simulation (the verification runs the scenario's whole duration)."""
SEARCH_REQUESTS = 1000
WARMUP_FRACTION = 0.1
REL_TOL = 0.05
MAX_PROBES = 10
SAMPLE_REQUESTS = SEARCH_REQUESTS  # kept for callers of the earlier name

ProgressFn = Callable[[int, int, str], None]
"""progress(options_done, options_total, what is being measured now)."""


@dataclass(frozen=True)
class CostReport:
    models: pd.DataFrame  # one row per model: spend, unit costs, idle waste, always-on comparison
    rightsizing: pd.DataFrame  # one row per LLM model: current vs the cheapest fleet meeting its load
    recommendations: list[Recommendation]  # the searches behind those rows


def served_by(result: RunResult) -> pd.Series:
    """The model whose replica served each request (a fallback's, for requests that fell back)."""
    owner = result.replicas.drop_duplicates("replica").set_index("replica")["model"].astype(str)
    return result.requests["replica"].astype(str).map(owner)


def spend_by_model(result: RunResult, scenario: Scenario) -> pd.DataFrame:
    ts = result.timeseries
    req = result.requests[result.requests["status"] == "ok"]
    served = served_by(result).loc[req.index]
    hours = result.summary["sim_end_s"] / 3600.0
    rows = []
    for m in scenario.models:
        t = ts[ts["model"] == m.name]
        r = req[served == m.name]
        cost = float(t["cost_usd"].sum())
        peak = int(t["ready_replicas"].max()) if len(t) else 0
        if len(m.groups()) > 1:  # replica groups have fixed counts: always on is every group for the whole run
            always_on = group_usd_per_hour(m) * hours
        else:
            always_on = peak * m.gpus_per_replica * catalog.gpu(m.gpu).price_per_gpu_hour * hours
        tokens = float(r["output_tokens"].sum())
        rows.append(
            {
                "model": m.name,
                "gpu": " + ".join(f"{g.gpus_per_replica} x {g.gpu}" for g in m.groups()),
                "requests_ok": len(r),
                "gpu_hours": float(t["gpu_hours"].sum()),
                "cost_usd": cost,
                "cost_per_1k_requests_usd": cost / len(r) * 1000 if len(r) else np.nan,
                "cost_per_million_output_tokens_usd": cost / tokens * 1e6 if tokens else np.nan,
                "idle_gpu_hours": float((t["gpu_hours"] * (1.0 - t["gpu_busy"])).sum()),
                "peak_replicas": peak,
                "always_on_at_peak_usd": always_on,
                "saving_vs_always_on_usd": round(always_on - cost, 6),
            }
        )
    return pd.DataFrame(rows)


def group_usd_per_hour(m: ModelDeployment, replicas: int | None = None) -> float:
    """$/h of a model's replicas, each replica group at its own GPU's price (`replicas` overrides a lone group's)."""
    groups = m.groups()
    if replicas is not None and len(groups) == 1:
        return catalog.gpu(m.gpu).price_per_gpu_hour * m.gpus_per_replica * replicas
    return sum(catalog.gpu(g.gpu).price_per_gpu_hour * g.gpus_per_replica * g.replicas for g in groups)


@dataclass(frozen=True)
class Option:
    """One way to run a replica: `pp` stages (nodes) of `tp` GPUs of `gpu`."""

    gpu: str
    tp: int
    pp: int = 1

    @property
    def label(self) -> str:
        return f"{self.gpu} x{self.tp}" + (f" pp{self.pp}" if self.pp > 1 else "")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class SloThroughput:
    """What one option carries: its saturation rate and the search for the highest rate within the SLOs."""

    option: Option
    saturation_rps: float
    search: RateSearch
    wall_s: float

    @property
    def rate_rps(self) -> float:
        return self.search.rate


class _Prober:
    """Simulates one replica of one option on a fixed sample of the model's requests at any arrival rate."""

    def __init__(
        self,
        m: ModelDeployment,
        option: Option,
        mix: pd.DataFrame,
        slos: Mapping[str, Slo],
        workdir: Path,
        *,
        seed: int = 0,
        requests: int = SEARCH_REQUESTS,
        scenario: Scenario | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(mix), size=requests, replace=len(mix) < requests)
        self.sample = pd.DataFrame(
            {
                "prompt_tokens": mix["prompt_tokens"].to_numpy()[pick],
                "output_tokens": mix["output_tokens"].to_numpy()[pick],
                "priority": mix["priority"].astype(str).to_numpy()[pick],
            }
        )
        self.gaps = rng.exponential(1.0, requests)  # unit-rate Poisson gaps: the same for every rate and option
        self.m, self.option, self.slos, self.workdir = m, option, slos, workdir
        self.pool = next((p for p in scenario.gpu_pool if p.gpu == option.gpu), None) if scenario else None

    def simulate(self, arrival_s: np.ndarray) -> pd.DataFrame:
        from odhsim.scenario.load import scenario_from_dict
        from odhsim.sim.run import simulate

        path = self.workdir / f"{self.m.name}-{self.option.label.replace(' ', '_')}.csv"
        self.sample.assign(arrival_s=arrival_s).to_csv(path, index=False)
        o = self.option
        deployment = self.m.model_dump(exclude={"autoscaling", "fallback", "storage_uri", "canary", "live"}) | {
            "gpu": o.gpu, "tp": o.tp, "pp": o.pp, "replicas": 1,
        }  # fmt: skip
        pool: dict[str, object] = {"gpu": o.gpu, "count": o.gpus, "gpus_per_node": o.tp}
        if self.pool is not None:
            pool |= {
                "inter_node_gbps": self.pool.inter_node_gbps,
                "inter_node_latency_us": self.pool.inter_node_latency_us,
            }
        sc = scenario_from_dict(
            {
                "name": f"capacity-{self.m.name}",
                "gpu_pool": [pool],
                "models": [deployment],
                "workload": {"sources": [{"kind": "trace", "path": str(path), "format": "csv"}]},
                "slos": {k: v.model_dump() for k, v in self.slos.items()},
                "outputs": {"timeseries_bucket_s": 60.0},
            }
        )
        return simulate(sc).requests

    def saturation_rps(self) -> float:
        """Completions per second with every request queued at once (arrivals spread over the first second)."""
        r = self.simulate(np.linspace(0.0, 1.0, len(self.sample)))
        ok = r["status"] == "ok"
        end = float(r["finish_s"].max())
        return int(ok.sum()) / end if end > 0 else 0.0

    def meets(self, rate: float) -> bool:
        r = self.simulate(np.cumsum(self.gaps) / rate)
        return meets_slos(r.iloc[int(WARMUP_FRACTION * len(r)) :], self.slos)


def slo_throughput(
    m: ModelDeployment,
    option: Option,
    mix: pd.DataFrame,
    slos: Mapping[str, Slo],
    *,
    seed: int = 0,
    requests: int = SEARCH_REQUESTS,
    rel_tol: float = REL_TOL,
    max_probes: int = MAX_PROBES,
    scenario: Scenario | None = None,
) -> SloThroughput:
    """The highest arrival rate one replica of `option` carries within `slos` on the request mix `mix` (columns
    prompt_tokens, output_tokens, priority): saturation first, then the bisection (module doc)."""
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prober = _Prober(m, option, mix, slos, Path(tmp), seed=seed, requests=requests, scenario=scenario)
        saturation = prober.saturation_rps()
        if saturation <= 0:
            search = RateSearch(0.0, 0.0, (), rel_tol)
        else:
            search = max_rate_meeting_slo(prober.meets, saturation, rel_tol=rel_tol, max_probes=max_probes)
    return SloThroughput(option, saturation, search, time.perf_counter() - wall0)


def mean_rate(result: RunResult, scenario: Scenario, model: str) -> float:
    """The model's mean arrival rate in the run: its requests over the arrival window (the scenario's duration)."""
    req = result.requests
    n = int((req["model"].astype(str) == model).sum())
    span = scenario.duration_s or float(req["arrival_s"].max() if len(req) else 0.0)
    return n / span if span > 0 else 0.0


def rightsizing(
    result: RunResult,
    scenario: Scenario,
    *,
    rate: float | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    executor: object | None = None,
    duration_s: float | None = None,
) -> tuple[pd.DataFrame, list[Recommendation]]:
    """Per LLM model that received requests: the cheapest fleet at `rate` req/s (default: its mean rate)."""
    llms = [m for m in scenario.models if m.kind == "llm" and mean_rate(result, scenario, m.name) > 0]
    if rate is not None and len(llms) > 1:
        raise CapacityError("--rate is one model's rate: give a scenario with one LLM, or leave --rate out")
    rows, recs = [], []
    search_s = min(SEARCH_DURATION_S, duration_s or scenario.duration_s or SEARCH_DURATION_S)
    for i, m in enumerate(llms):
        if progress is not None:
            progress(i, len(llms), m.name)
        base = mean_rate(result, scenario, m.name)
        target, basis = (rate, "the --rate given") if rate is not None else (base, "the workload's mean rate")
        rec = rightsize_model(scenario, m.name, target, base, rate_basis=basis, duration_s=search_s, seed=seed,
                              executor=executor)  # fmt: skip
        recs.append(rec)
        current = group_usd_per_hour(m) if len(m.groups()) > 1 else group_usd_per_hour(m, max(1, m.replicas))
        v = rec.verified
        rows.append(
            {
                "model": m.name,
                "target_rps": target,
                "rate_basis": basis,
                "current": " + ".join(f"{g.replicas} x ({Option(g.gpu, g.tp, g.pp).label})" for g in m.groups()),
                "current_usd_per_hour": current,
                "cheapest": rec.pick.label if rec.pick else "none meets the SLOs",
                "cheapest_usd_per_hour": rec.pick.usd_per_hour if rec.pick else np.nan,
                "saving_usd_per_hour": current - rec.pick.usd_per_hour if rec.pick else np.nan,
                "verified_meets_slos": bool(v.meets) if v else False,
                "verified_slo_attainment": v.slo_attainment if v else np.nan,
                "verified_ttft_p99_s": v.ttft_p99_s if v else np.nan,
                "verified_e2e_p99_s": v.e2e_p99_s if v else np.nan,
                "usd_per_million_tokens": v.usd_per_million_tokens if v else np.nan,
                "fewest_replicas_per_option": "; ".join(
                    f"{o.option}: {o.replicas if o.replicas is not None else 'none'}" for o in rec.options
                ),
                "mixed_fleets": rec.mixed_note,
                "simulations": rec.simulations,
            }
        )
    if progress is not None:
        progress(len(llms), len(llms), "done")
    return pd.DataFrame(rows), recs


def cost_report(
    result: RunResult,
    scenario: Scenario,
    progress: ProgressFn | None = None,
    *,
    rate: float | None = None,
    executor: object | None = None,
    duration_s: float | None = None,
) -> CostReport:
    sizing, recs = rightsizing(
        result, scenario, rate=rate, seed=result.seed, progress=progress, executor=executor, duration_s=duration_s
    )
    return CostReport(spend_by_model(result, scenario), sizing, recs)
