"""The cost report of a run: what each model cost, what it would have cost always-on at its peak, the GPU-hours
allocated while idle, and right-sizing: the cheapest GPU type and count that would carry its load.

Right-sizing follows Mélange: each (GPU type, tensor-parallel degree) that fits the model is an option whose
per-replica throughput is measured by the simulator itself (one replica, the model's own request mix replayed
fast enough to keep a queue: its saturation throughput), derated to `target_utilization` (0.7, the load at which
queueing stays modest) as the throughput that meets the SLOs; `policies.cost.rightsizing` then solves the integer
program with scipy.optimize.milp for the model's peak arrival rate. The derating is a heuristic, said so in the
report, rather than a search for the exact rate at which each option breaks its TTFT target.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from odhsim import catalog
from odhsim.results.run_result import RunResult
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from policies.cost.rightsizing import GpuOption, WorkloadBucket, rightsize

TARGET_UTILIZATION = 0.7
SAMPLE_REQUESTS = 1500


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
        always_on = peak * m.tp * price * hours
        tokens = float(r["output_tokens"].sum())
        rows.append(
            {
                "model": m.name,
                "gpu": f"{m.tp} x {m.gpu}",
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


def _options(m: ModelDeployment, gpus_per_node: int = 8) -> list[tuple[str, int]]:
    """Each GPU type of the catalogue at the smallest tensor-parallel degree where the model fits."""
    assert m.profile is not None
    need = m.engine.max_model_len or catalog.model(m.profile).max_context
    out = []
    for gpu in catalog.gpu_names():
        for tp in (1, 2, 4, 8):
            if tp <= gpus_per_node and catalog.fits(m.profile, gpu, tp, m.engine.gpu_memory_utilization, need):
                out.append((gpu, tp))
                break
    return out


def saturation_rps(m: ModelDeployment, gpu: str, tp: int, mix: pd.DataFrame, workdir: Path) -> float:
    """Requests per second one replica of (gpu, tp) completes on this request mix with a standing queue."""
    from odhsim.scenario.load import scenario_from_dict
    from odhsim.sim.run import simulate

    path = workdir / f"{m.name}-{gpu}-{tp}.csv"
    burst = pd.DataFrame(
        {
            "arrival_s": np.linspace(0.0, 1.0, len(mix)),
            "prompt_tokens": mix["prompt_tokens"],
            "output_tokens": mix["output_tokens"],
        }
    )
    burst.to_csv(path, index=False)
    deployment = m.model_dump(exclude={"autoscaling", "fallback", "storage_uri"}) | {
        "gpu": gpu,
        "tp": tp,
        "replicas": 1,
    }
    sc = scenario_from_dict(
        {
            "name": f"capacity-{m.name}",
            "gpu_pool": [{"gpu": gpu, "count": tp}],
            "models": [deployment],
            "workload": {"sources": [{"kind": "trace", "path": str(path), "format": "csv"}]},
            "outputs": {"timeseries_bucket_s": 60.0},
        }
    )
    s = simulate(sc).summary
    return s["completed"] / s["sim_end_s"] if s["sim_end_s"] > 0 else 0.0


def rightsizing(result: RunResult, scenario: Scenario, rng_seed: int = 0) -> pd.DataFrame:
    rows = []
    req, ts = result.requests, result.timeseries
    served = served_by(result)
    for m in scenario.models:
        if m.kind != "llm":
            continue
        mine = req[(served == m.name) & (req["status"] == "ok")]
        t = ts[ts["model"] == m.name]
        if mine.empty or t.empty or t["ready_replicas"].max() == 0:
            continue  # nothing served here (a rejected deployment's load is costed where it fell back)
        bucket_s = scenario.outputs.timeseries_bucket_s
        peak_rps = float(np.percentile(t["arrivals"] / bucket_s, 95))
        rng = np.random.default_rng(rng_seed)
        mix = mine.iloc[rng.permutation(len(mine))[:SAMPLE_REQUESTS]]
        with tempfile.TemporaryDirectory() as tmp:
            tput = {(f"{g} x{tp}", "load"): TARGET_UTILIZATION * saturation_rps(m, g, tp, mix, Path(tmp))
                    for g, tp in _options(m)}  # fmt: skip
        options = [GpuOption(f"{g} x{tp}", catalog.gpu(g).price_per_gpu_hour * tp, g, tp) for g, tp in _options(m)]
        current = f"{m.gpu} x{m.tp}"
        peak_replicas = int(t["ready_replicas"].max())
        baseline = catalog.gpu(m.gpu).price_per_gpu_hour * m.tp * max(1, peak_replicas)
        best = rightsize(options, [WorkloadBucket("load", max(peak_rps, 1e-6))], tput, baseline)
        chosen = {k: v for k, v in best.counts.items() if v}
        rows.append(
            {
                "model": m.name,
                "peak_rps_p95": peak_rps,
                "current": f"{max(1, peak_replicas)} x ({current})",
                "current_usd_per_hour": baseline,
                "cheapest": " + ".join(f"{n} x ({k})" for k, n in chosen.items()),
                "cheapest_usd_per_hour": best.cost_usd_per_hour,
                "saving_usd_per_hour": best.saving_usd_per_hour,
                "slo_throughput_per_replica": "; ".join(f"{k[0]}: {v:.2f}/s" for k, v in sorted(tput.items())),
            }
        )
    return pd.DataFrame(rows)


def cost_report(result: RunResult, scenario: Scenario) -> CostReport:
    return CostReport(spend_by_model(result, scenario), rightsizing(result, scenario))
