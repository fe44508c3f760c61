"""The run summary: counts, latency percentiles, SLO attainment, throughput and cost, from the tidy tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from odhsim.scenario.model import Scenario
from odhsim.workload.schema import PRIORITY_CLASSES


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _token_hit_rate(requests: pd.DataFrame, ok: np.ndarray) -> float:
    """Share of prompt tokens served from replicas' prefix caches (vLLM's prefix_cache_hits / queries)."""
    prompt = requests["prompt_tokens"].to_numpy()[ok].sum()
    return float(requests["cached_tokens"].to_numpy()[ok].sum() / prompt) if prompt else 0.0


def latency_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """TTFT, TPOT (time per output token after the first) and end-to-end latency per request, NaN if not ok."""
    ok = (requests["status"] == "ok").to_numpy()
    ttft = np.where(ok, requests["first_token_s"] - requests["arrival_s"], np.nan)
    e2e = np.where(ok, requests["finish_s"] - requests["arrival_s"], np.nan)
    out = requests["output_tokens"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (out > 1), (requests["finish_s"] - requests["first_token_s"]) / (out - 1), np.nan)
    return pd.DataFrame({"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e}, index=requests.index)


def slo_met(requests: pd.DataFrame, scenario: Scenario) -> np.ndarray:
    """True where a request finished ok within its priority class's TTFT and end-to-end targets."""
    lat = latency_columns(requests)
    prio = requests["priority"].cat.codes.to_numpy()
    ttft_target = np.array([scenario.slo_for(c).ttft_s or np.inf for c in PRIORITY_CLASSES])[prio]
    e2e_target = np.array([scenario.slo_for(c).e2e_s or np.inf for c in PRIORITY_CLASSES])[prio]
    ok = (requests["status"] == "ok").to_numpy()
    with np.errstate(invalid="ignore"):
        return ok & (lat["ttft_s"].to_numpy() <= ttft_target) & (lat["e2e_s"].to_numpy() <= e2e_target)


def summarize(
    requests: pd.DataFrame,
    timeseries: pd.DataFrame,
    scenario: Scenario,
    *,
    end_s: float,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status = requests["status"]
    n = len(requests)
    counts = {s: int((status == s).sum()) for s in ("ok", "shed", "failed", "timeout", "unfinished")}
    lat = latency_columns(requests)
    ttft = lat["ttft_s"].dropna().to_numpy()
    tpot = lat["tpot_s"].dropna().to_numpy()
    e2e = lat["e2e_s"].dropna().to_numpy()
    met = slo_met(requests, scenario)
    ok = (status == "ok").to_numpy()
    span = end_s if end_s > 0 else float("nan")
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "requests": n,
        "completed": counts["ok"],
        "shed": counts["shed"],
        "failed": counts["failed"],
        "timeout": counts["timeout"],
        "in_flight_at_stop": counts["unfinished"],
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p90_s": _pct(ttft, 90),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p99_s": _pct(tpot, 99),
        "e2e_p50_s": _pct(e2e, 50),
        "e2e_p99_s": _pct(e2e, 99),
        "throughput_rps": counts["ok"] / span,
        "output_tokens_per_s": float(requests["output_tokens"].to_numpy()[ok].sum()) / span,
        "goodput_rps": float(met.sum()) / span,
        "slo_attainment": float(met.mean()) if n else float("nan"),
        "prefix_cache_hit_rate": _token_hit_rate(requests, ok),
        "response_cache_hit_rate": float(requests["cache_hit"].to_numpy().mean()) if n else 0.0,
        "gpu_hours": float(timeseries["gpu_hours"].sum()) if len(timeseries) else 0.0,
        "cost_usd": float(timeseries["cost_usd"].sum()) if len(timeseries) else 0.0,
        "energy_kwh": float(timeseries["energy_kwh"].sum()) if len(timeseries) else 0.0,
        "sim_end_s": end_s,
        "wall_s": wall_s,
        "sim_requests_per_wall_s": n / wall_s if wall_s > 0 else float("nan"),
    }
    if len(timeseries):
        by_model = timeseries.groupby("model", observed=True)[["cost_usd", "gpu_hours"]].sum()
        summary["cost_usd_by_model"] = {str(k): float(v) for k, v in by_model["cost_usd"].items()}
        summary["gpu_hours_by_model"] = {str(k): float(v) for k, v in by_model["gpu_hours"].items()}
    summary["cost_per_1k_requests_usd"] = summary["cost_usd"] / counts["ok"] * 1000 if counts["ok"] else float("nan")
    if extra:
        summary.update(extra)
    return summary


def by_version(requests: pd.DataFrame) -> pd.DataFrame:
    """Per (model, version): requests, ok, and TTFT / E2E percentiles of the ok ones; how a canary compares with
    the stable revision it shares traffic with. One row per pair that served at least one request."""
    lat = latency_columns(requests)
    frame = pd.DataFrame(
        {
            "model": requests["model"].astype(str),
            "version": requests["version"].astype(str),
            "ok": (requests["status"] == "ok").to_numpy(),
            "ttft_s": lat["ttft_s"],
            "e2e_s": lat["e2e_s"],
        }
    )
    frame = frame[frame["version"] != ""]
    rows = []
    for (model, version), g in frame.groupby(["model", "version"], sort=True):
        ttft, e2e = g["ttft_s"].dropna().to_numpy(), g["e2e_s"].dropna().to_numpy()
        rows.append(
            {
                "model": model,
                "version": version,
                "requests": len(g),
                "ok": int(g["ok"].sum()),
                "ttft_p50_s": _pct(ttft, 50),
                "ttft_p99_s": _pct(ttft, 99),
                "e2e_p99_s": _pct(e2e, 99),
            }
        )
    return pd.DataFrame(rows, columns=["model", "version", "requests", "ok", "ttft_p50_s", "ttft_p99_s", "e2e_p99_s"])
