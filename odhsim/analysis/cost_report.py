"""The cost report of a run: what each model cost, what it would have cost always-on at its peak, the GPU-hours
allocated while idle, and right-sizing: the cheapest GPU type and count that would carry its load within its SLOs.

Right-sizing follows Mélange: each (GPU type, tensor-parallel degree) that fits the model, plus the model's own
deployment, is an option whose per-replica throughput within the SLOs the simulator measures itself, on the
model's own request mix (prompt and output lengths and priority classes of the requests it served):

1. saturation: one replica, all SEARCH_REQUESTS requests at once; completions / time is a rate it cannot exceed.
2. the SLO rate: `policies.cost.rightsizing.max_rate_meeting_slo` bisects (geometrically) below that bound for
   the highest Poisson arrival rate at which the p99 (SLO_PERCENTILE) time to first token and end-to-end latency
   meet the scenario's `slos`, each request against its own priority class's targets, pooled over the classes
   (`meets_slos`: at most 1% of requests miss). Each probe is a short simulation of SEARCH_REQUESTS
   requests (the first WARMUP_FRACTION left out of the percentiles); every probe and every option replays the
   same requests and the same unit-rate exponential gaps scaled by 1 / rate (common random numbers), so the
   check moves smoothly with the rate. The bracket closes to REL_TOL (5%) of the rate, in at most MAX_PROBES
   probes; a request that fails counts as missing its SLO.

`policies.cost.rightsizing` then solves the integer program with scipy.optimize.milp for the model's p95 arrival
rate per time bucket. Short runs see a near-saturation queue before it reaches its steady state, so close to
saturation the found rate leans optimistic; saturation itself is the hard cap.
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
from odhsim.results.run_result import RunResult
from odhsim.results.summary import latency_columns
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario, Slo
from policies.cost.rightsizing import GpuOption, RateSearch, WorkloadBucket, max_rate_meeting_slo, rightsize

SLO_PERCENTILE = 99.0
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
    rightsizing: pd.DataFrame  # one row per LLM model: current vs cheapest option meeting its load


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
        price = catalog.gpu(m.gpu).price_per_gpu_hour
        peak = int(t["ready_replicas"].max()) if len(t) else 0
        always_on = peak * m.gpus_per_replica * price * hours
        tokens = float(r["output_tokens"].sum())
        rows.append(
            {
                "model": m.name,
                "gpu": f"{m.gpus_per_replica} x {m.gpu}",
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


def _options(m: ModelDeployment, scenario: Scenario | None = None) -> list[Option]:
    """Each GPU type of the catalogue at the smallest tensor-parallel degree (within a node) where the model
    fits, and the model's own deployment."""
    assert m.profile is not None
    need = m.engine.max_model_len or catalog.model(m.profile).max_context
    per_node = {p.gpu: p.gpus_per_node for p in scenario.gpu_pool} if scenario is not None else {}
    out = []
    for gpu in catalog.gpu_names():
        for tp in (1, 2, 4, 8):
            if tp <= per_node.get(gpu, 8) and catalog.fits(m.profile, gpu, tp, m.engine.gpu_memory_utilization, need):
                out.append(Option(gpu, tp))
                break
    own = Option(m.gpu, m.tp, m.pp)
    return out if own in out else [*out, own]


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


def slo_ratios(requests: pd.DataFrame, slos: Mapping[str, Slo]) -> np.ndarray:
    """Per request whose priority class has a target: its latency over its class's target, the worse of TTFT and
    end-to-end (<= 1: the request met its SLO); a request that did not finish ok is infinitely late."""
    lat = latency_columns(requests)
    prio = requests["priority"].astype(str).to_numpy()
    never = np.inf
    ttft_target = np.array([(slos[c].ttft_s if c in slos else None) or never for c in prio], dtype=float)
    e2e_target = np.array([(slos[c].e2e_s if c in slos else None) or never for c in prio], dtype=float)
    judged = np.isfinite(ttft_target) | np.isfinite(e2e_target)
    ttft = np.nan_to_num(lat["ttft_s"].to_numpy(), nan=np.inf)
    e2e = np.nan_to_num(lat["e2e_s"].to_numpy(), nan=np.inf)
    with np.errstate(invalid="ignore"):  # inf / inf for a failed request in a class without one of the targets
        ratios = np.fmax(np.nan_to_num(ttft / ttft_target, nan=0.0), np.nan_to_num(e2e / e2e_target, nan=0.0))
    ok = (requests["status"] == "ok").to_numpy()
    return np.where(ok, ratios, np.inf)[judged]


def meets_slos(requests: pd.DataFrame, slos: Mapping[str, Slo], percentile: float = SLO_PERCENTILE) -> bool:
    """Whether the `percentile` (p99) TTFT and end-to-end latency meet the SLOs, each request measured against its
    own priority class's targets (`slo_ratios`), pooled over the classes: at most 1% of the requests may miss.
    Pooled, because a class with a tenth of the requests would otherwise have its p99 decided by its worst one or
    two requests, and the answer would jump from one sample of the mix to the next."""
    ratios = slo_ratios(requests, slos)
    return not len(ratios) or float(np.percentile(ratios, percentile, method="higher")) <= 1.0


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


def rightsizing(
    result: RunResult, scenario: Scenario, rng_seed: int = 0, progress: ProgressFn | None = None
) -> pd.DataFrame:
    rows = []
    req, ts = result.requests, result.timeseries
    served = served_by(result)
    bucket_s = scenario.outputs.timeseries_bucket_s
    buckets = max(1, int(np.ceil(result.summary["sim_end_s"] / bucket_s)))
    work = []
    for m in scenario.models:
        if m.kind != "llm":
            continue
        mine = req[(served == m.name) & (req["status"] == "ok")]
        t = ts[ts["model"] == m.name]
        if mine.empty or t.empty or t["ready_replicas"].max() == 0:
            continue  # nothing served here (a rejected deployment's load is costed where it fell back)
        # its demand: what its replicas served (fallback traffic included) and what reached no replica of any model
        unrouted = (req["model"] == m.name) & req["replica"].isna() & ~req["fallback"]
        arrivals = req.loc[(served == m.name) | unrouted, "arrival_s"].to_numpy()
        per_bucket = np.bincount((arrivals // bucket_s).astype(np.int64), minlength=buckets)
        work.append((m, mine, t, float(np.percentile(per_bucket / bucket_s, 95))))
    total = sum(len(_options(m, scenario)) for m, *_ in work)
    done = 0
    for m, mine, t, peak_rps in work:
        found: dict[str, SloThroughput] = {}
        for o in _options(m, scenario):
            if progress is not None:
                progress(done, total, f"{m.name} on {o.label}")
            found[o.label] = slo_throughput(m, o, mine, scenario.slos, seed=rng_seed, scenario=scenario)
            done += 1
        if progress is not None:
            progress(done, total, m.name)
        tput = {(label, "load"): f.rate_rps for label, f in found.items()}
        options = [
            GpuOption(f.option.label, catalog.gpu(f.option.gpu).price_per_gpu_hour * f.option.gpus, f.option.gpu,
                      f.option.gpus)
            for f in found.values()
        ]  # fmt: skip
        current = Option(m.gpu, m.tp, m.pp).label
        peak_replicas = int(t["ready_replicas"].max())
        baseline = catalog.gpu(m.gpu).price_per_gpu_hour * m.gpus_per_replica * max(1, peak_replicas)
        row: dict[str, object] = {
            "model": m.name,
            "peak_rps_p95": peak_rps,
            "current": f"{max(1, peak_replicas)} x ({current})",
            "current_usd_per_hour": baseline,
        }
        if not any(v > 0 for v in tput.values()):
            row |= {"cheapest": "none meets the SLOs", "cheapest_usd_per_hour": np.nan, "saving_usd_per_hour": np.nan}
        else:
            best = rightsize(options, [WorkloadBucket("load", max(peak_rps, 1e-6))], tput, baseline)
            chosen = {k: v for k, v in best.counts.items() if v}
            row |= {
                "cheapest": " + ".join(f"{n} x ({k})" for k, n in chosen.items()),
                "cheapest_usd_per_hour": best.cost_usd_per_hour,
                "saving_usd_per_hour": best.saving_usd_per_hour,
            }
        row["slo_throughput_per_replica"] = "; ".join(
            f"{label}: {f.rate_rps:.2f}/s (saturation {f.saturation_rps:.2f}/s)" for label, f in sorted(found.items())
        )
        row["search_probes"] = sum(len(f.search.probes) + 1 for f in found.values())
        row["search_wall_s"] = sum(f.wall_s for f in found.values())
        rows.append(row)
    return pd.DataFrame(rows)


def cost_report(result: RunResult, scenario: Scenario, progress: ProgressFn | None = None) -> CostReport:
    return CostReport(spend_by_model(result, scenario), rightsizing(result, scenario, progress=progress))
