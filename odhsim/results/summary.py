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


def slos_used(scenario: Any) -> dict[str, dict[str, float | None]]:
    """The TTFT / end-to-end targets each priority class was held to (null: no target), as written in summaries."""
    return {c: {"ttft_s": scenario.slo_for(c).ttft_s, "e2e_s": scenario.slo_for(c).e2e_s} for c in PRIORITY_CLASSES}


def _request_metrics(requests: pd.DataFrame, met: np.ndarray, span: float) -> dict[str, Any]:
    """Counts, latency percentiles, throughput and SLO figures of one set of requests (a model's or all)."""
    status = requests["status"]
    n = len(requests)
    counts = {s: int((status == s).sum()) for s in ("ok", "shed", "failed", "timeout", "unfinished")}
    lat = latency_columns(requests)
    ttft = lat["ttft_s"].dropna().to_numpy()
    tpot = lat["tpot_s"].dropna().to_numpy()
    e2e = lat["e2e_s"].dropna().to_numpy()
    ok = (status == "ok").to_numpy()
    return {
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
        "slo_missed": int(n - met.sum()),
        "prefix_cache_hit_rate": _token_hit_rate(requests, ok),
        "availability": counts["ok"] / n if n else float("nan"),
        "retry_amplification": retry_amplification(requests),
    }


def retry_amplification(requests: pd.DataFrame) -> float:
    """Attempts per request that reached dispatch: the `attempts` column (replicas tried, the fallback's included)
    summed over the requests with at least one, divided by their number. 1.0: no request was tried twice; a
    cache hit or a request shed or failed before any replica saw it is left out (it cost no attempt). NaN when no
    request was dispatched (or the table predates the column)."""
    if "attempts" not in requests:
        return float("nan")
    attempts = requests["attempts"].to_numpy()
    dispatched = attempts > 0
    return float(attempts[dispatched].sum() / dispatched.sum()) if dispatched.any() else float("nan")


def summarize(
    requests: pd.DataFrame,
    timeseries: pd.DataFrame,
    scenario: Scenario,
    *,
    end_s: float,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pooled metrics, the same per model (`by_model`), the SLOs used (`slos`) and run-level `warnings`.

    `slo_missed` counts requests that did not finish ok within their class's targets (shed, failed, timed-out and
    unfinished requests miss too), so `slo_attainment` = 1 - slo_missed / requests. `availability` is the share of
    requests answered ok (completed / requests); `retry_amplification` is defined in `retry_amplification`."""
    n = len(requests)
    met = slo_met(requests, scenario)
    span = end_s if end_s > 0 else float("nan")
    summary: dict[str, Any] = {"scenario": scenario.name, **_request_metrics(requests, met, span)}
    summary.update(
        {
            "response_cache_hit_rate": float(requests["cache_hit"].to_numpy().mean()) if n else 0.0,
            "gpu_hours": float(timeseries["gpu_hours"].sum()) if len(timeseries) else 0.0,
            "cost_usd": float(timeseries["cost_usd"].sum()) if len(timeseries) else 0.0,
            "energy_kwh": float(timeseries["energy_kwh"].sum()) if len(timeseries) else 0.0,
            "sim_end_s": end_s,
            "wall_s": wall_s,
            "sim_requests_per_wall_s": n / wall_s if wall_s > 0 else float("nan"),
        }
    )
    if len(timeseries):
        by_model = timeseries.groupby("model", observed=True)[["cost_usd", "gpu_hours"]].sum()
        summary["cost_usd_by_model"] = {str(k): float(v) for k, v in by_model["cost_usd"].items()}
        summary["gpu_hours_by_model"] = {str(k): float(v) for k, v in by_model["gpu_hours"].items()}
    completed = summary["completed"]
    summary["cost_per_1k_requests_usd"] = summary["cost_usd"] / completed * 1000 if completed else float("nan")
    summary["by_model"] = _by_model(requests, met, span, summary)
    summary["slos"] = slos_used(scenario)
    if extra:
        summary.update(extra)
    summary.setdefault("warnings", [])
    return summary


def _model_names(requests: pd.DataFrame) -> list[str]:
    """Every model the requests table knows (its categories: models that got no request included), in order."""
    col = requests["model"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return sorted({str(v) for v in col.unique()})


def _by_model(
    requests: pd.DataFrame, met: np.ndarray, span: float, pooled: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per requested model: the pooled metrics over its requests, and its GPU-hours and cost."""
    names = requests["model"].astype(str).to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for name in _model_names(requests):
        mine = names == name
        metrics = _request_metrics(requests[mine], met[mine], span)
        metrics["gpu_hours"] = pooled.get("gpu_hours_by_model", {}).get(name, 0.0)
        metrics["cost_usd"] = pooled.get("cost_usd_by_model", {}).get(name, 0.0)
        out[name] = metrics
    return out


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


def unserved_models(
    scenario: Scenario, requests: pd.DataFrame, replicas: pd.DataFrame, events: pd.DataFrame
) -> dict[str, str]:
    """Models that never had a ready replica in the run, each with why: the deploy rejection's reason, `replicas: 0`
    without an autoscaler, or the reason its requests failed with. A model that never got a request and could have
    scaled from zero is not listed (nothing asked it to serve)."""
    ready = set(replicas.loc[replicas["state"] == "ready", "model"].astype(str))
    rejected: dict[str, str] = {}
    deploys = events[events["kind"] == "deploy"]
    for model, detail in zip(deploys["model"].astype(str), deploys["detail"].astype(str), strict=True):
        if detail.startswith("rejected"):
            rejected.setdefault(model, detail)
    asked = requests["model"].astype(str).to_numpy()
    out: dict[str, str] = {}
    for m in scenario.models:
        if m.name in ready:
            continue
        mine = requests[asked == m.name]
        if m.name in rejected:
            out[m.name] = f"deploy {rejected[m.name]}"
        elif m.replicas == 0 and m.autoscaling is None:
            out[m.name] = "replicas: 0 and no autoscaler, so no replica ever starts"
        elif len(mine):
            reasons = mine.loc[mine["status"] != "ok", "reason"].astype(str)
            reasons = reasons[reasons != ""]
            why = f": {reasons.value_counts().index[0]}" if len(reasons) else ""
            out[m.name] = f"no replica became ready during the run{why}"
        else:
            continue
        if len(mine):
            served = int((mine["status"] == "ok").sum())
            by = f"{served:,} served by its fallback {m.fallback!r}" if m.fallback else "none served"
            out[m.name] += f" ({len(mine):,} requests, {by})"
    return out
