"""A results folder read back for `odhsim explain`: one request's life, and the run's anomalies and regret.

Plain data (dicts and lists) that the CLI renders with rich or prints as JSON. A request's life joins its row of
requests.parquet (arrival, cache, status, tokens, times) with its decision records (admission, queue pops, each
attempt's routing decision with every candidate's state and scores, retries and fallbacks) in time order; with
the run's regret yardstick (`summary["regret_params"]`) each candidate also gets its latency estimate.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from odhsim.errors import OdhsimError
from odhsim.explain.anomalies import Anomaly, AnomalySettings, RunTables, anomaly_counts, anomaly_events, detect
from odhsim.explain.regret import regret_frame
from policies.routing.latency_estimate import LatencyEstimateParams

HOW_TO_RECORD = (
    "record them with `outputs: {decisions: all}` in the scenario (or sample:<share>), e.g. "
    "odhsim run SCENARIO --set outputs.decisions=all --out DIR"
)


class ExplainError(OdhsimError):
    """A results folder `odhsim explain` cannot answer from (missing, not a run's results, unknown request)."""


def load(folder: Path) -> dict[str, Any]:
    """The folder's tables and summary (odhsim.results.run_result.load_results), or an ExplainError saying what is
    missing."""
    from odhsim.results.run_result import TABLES, load_results

    if not folder.exists():
        raise ExplainError(f"{folder}: no such results folder (write one with odhsim run SCENARIO --out {folder})")
    if not folder.is_dir():
        raise ExplainError(f"{folder}: is a file; give the folder odhsim run --out wrote")
    missing = [f"{t}.parquet" for t in TABLES if not (folder / f"{t}.parquet").exists()]
    if not (folder / "summary.json").exists():
        missing.append("summary.json")
    if missing:
        raise ExplainError(f"{folder}: not a run's results folder (missing {', '.join(missing)})")
    return load_results(folder)


def _num(v: Any) -> Any:
    """A JSON-friendly scalar: numpy to Python, NaN to None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def request_row(loaded: dict[str, Any], request_id: int, folder: Path) -> dict[str, Any]:
    r = loaded["requests"]
    mine = r[r["request_id"] == request_id]
    if mine.empty:
        n = len(r)
        raise ExplainError(
            f"{folder}: request {request_id} is not in requests.parquet (ids run 0..{n - 1})"
            if n
            else f"{folder}: requests.parquet has no requests"
        )
    row = mine.iloc[0]
    keep = ["request_id", "model", "priority", "tenant", "arrival_s", "prompt_tokens", "output_tokens", "cache_hit",
            "cached_tokens", "start_s", "first_token_s", "finish_s", "status", "reason", "replica", "version",
            "attempts", "retries", "fallback"]  # fmt: skip
    text = {"model", "priority", "tenant", "status", "reason", "replica", "version"}
    return {k: ("" if pd.isna(row[k]) else str(row[k])) if k in text else _num(row[k]) for k in keep if k in row.index}


def _estimates(loaded: dict[str, Any], decisions: pd.DataFrame) -> dict[tuple[float, int, str], float]:
    """(decision time, attempt, candidate) -> latency estimate, when the run kept its regret yardstick."""
    params = (loaded["summary"].get("regret_params") or {}).get("models") or {}
    if not params:
        return {}
    yard = {m: LatencyEstimateParams(**p) for m, p in params.items()}
    block_tokens = int(loaded["summary"]["regret_params"].get("block_tokens", 16))
    rows = regret_frame(decisions, loaded["requests"], yard, block_tokens)
    return {
        (float(t), int(a), str(n)): float(e)
        for t, a, n, e in zip(rows["time_s"], rows["attempt"], rows["name"], rows["estimate_s"], strict=True)
    }


def _candidates(decisions: pd.DataFrame, estimates: dict[tuple[float, int, str], float]) -> dict[int, list[dict]]:
    """Per route row (its index in `decisions`): each candidate's state, scores and estimate."""
    from odhsim.results.decisions import candidates_frame

    out: dict[int, list[dict]] = {}
    for idx, row in decisions[decisions["kind"] == "route"].iterrows():
        frame = candidates_frame(decisions.loc[[idx]])
        cands: list[dict] = []
        for name, g in frame.groupby("name", sort=False):
            first = g.iloc[0]
            scores = [
                {"scorer": str(s["scorer"]), "weight": _num(s["weight"]), "raw": _num(s["raw"]),
                 "clamped": _num(s["clamped"])}
                for _, s in g.iterrows() if s["scorer"] is not None and s["scorer"] == s["scorer"]
            ]  # fmt: skip
            cands.append({
                "name": str(name), "filtered_by": str(first["filtered_by"]), "waiting": _num(first["waiting"]),
                "running": _num(first["running"]), "kv_usage": _num(first["kv_usage"]),
                "metrics_age_s": _num(first["metrics_age_s"]), "prefix_blocks": _num(first["prefix_blocks"]),
                "total": _num(first["total"]), "picked": bool(first["picked"]), "scores": scores,
                "estimate_s": estimates.get((float(row["time_s"]), int(row["attempt"]), str(name))),
            })  # fmt: skip
        out[int(idx)] = cands
    return out


def _step(row: pd.Series) -> dict[str, Any]:
    """One decision as a step of the request's life."""
    kind, action = str(row["kind"]), str(row["action"])
    step: dict[str, Any] = {"time_s": _num(row["time_s"]), "kind": kind, "action": action}
    if kind == "admission":
        step["detail"] = f"{action} (saturation {row['saturation']:.3g}, queue {int(row['queue_len'])})" + (
            f": {row['reason']}" if row["reason"] else ""
        )
    elif kind == "queue":
        step["detail"] = f"{action} after {row['waited_s']:.3f} s waiting ({int(row['queue_len'])} left in queue)"
    elif kind == "route":
        step["attempt"] = int(row["attempt"])
        pick = str(row["replica"]) or "none"
        step["detail"] = (
            f"attempt {int(row['attempt'])} -> {pick} ({row['reason']}; metrics {row['metrics_age_s']:.3f} s old)"
        )
    elif kind == "retry":
        step["attempt"] = int(row["attempt"])
        step["detail"] = (f"attempt {int(row['attempt'])} failed ({row['failure']}): {action}"
                          + (f" on {row['replica']}" if row["replica"] else "")
                          + (f" after {row['backoff_s']:.3f} s" if row["backoff_s"] == row["backoff_s"] else "")
                          + (f": {row['reason']}" if row["reason"] else ""))  # fmt: skip
    else:
        step["detail"] = str(row["reason"])
    return step


def request_life(loaded: dict[str, Any], request_id: int, folder: Path) -> dict[str, Any]:
    """The request's row, and its decisions in time order, each route with its candidates (ExplainError when the
    run recorded no decisions or did not sample this request)."""
    req = request_row(loaded, request_id, folder)
    decisions = loaded.get("decisions")
    if decisions is None:
        raise ExplainError(f"{folder}: no decisions.parquet, so the request's routing cannot be told; {HOW_TO_RECORD}")
    mine = decisions[decisions["request_id"] == request_id].sort_values("time_s", kind="stable")
    if mine.empty:
        raise ExplainError(
            f"{folder}: request {request_id} has no decision records (the run sampled decisions, or the request "
            f"never reached the gateway's decisions){_ticket_ids_note(loaded)}; to record every request, "
            f"{HOW_TO_RECORD}"
        )
    candidates = _candidates(mine, _estimates(loaded, mine))
    steps = []
    for idx, row in mine.iterrows():
        step = _step(row)
        if int(idx) in candidates:
            step["candidates"] = candidates[int(idx)]
        steps.append(step)
    return {"request": req, "decisions": steps}


def _ticket_ids_note(loaded: dict[str, Any]) -> str:
    """Why a live run's decisions may not join its requests: serve kept the gateway's ticket ids (its
    `decision_ids` event, runtime.decision_ids.with_client_ids)."""
    events = loaded.get("events")
    if events is None or events.empty or "kind" not in events.columns:
        return ""
    found = events.loc[events["kind"].astype(str) == "decision_ids", "detail"]
    return f"; {found.iloc[0]}" if len(found) else ""


def run_overview(loaded: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Anomaly counts and episodes, regret per model (with its worst decisions), and whether decisions exist."""
    summary = loaded["summary"]
    events = loaded["events"]
    counts = summary.get("anomalies")
    if counts is None:  # results written without detection (odhsim serve, an older odhsim): detect now
        found = detect_from_tables(loaded)
        counts = anomaly_counts(found)
        events = pd.DataFrame(anomaly_events(found), columns=["time_s", "kind", "model", "replica", "detail"])
    episodes = events[events["kind"].astype(str) == "anomaly"]
    out: dict[str, Any] = {
        "results": str(folder),
        "run_id": summary.get("run_id"),
        "requests": summary.get("requests"),
        "anomalies": counts,
        "episodes": [
            {"time_s": _num(t), "model": str(m), "replica": str(r), "detail": str(d)}
            | _from_decisions(loaded.get("decisions"), str(m), str(d))
            for t, m, r, d in episodes[["time_s", "model", "replica", "detail"]].itertuples(index=False)
        ],
        "decisions_recorded": loaded.get("decisions") is not None,
        "regret": summary.get("regret"),
    }
    if summary.get("anomalies") is None:
        out["note"] = "summary.json holds no anomaly counts: detected now from the tables, with the run's SLOs"
    if loaded.get("decisions") is None:
        out["regret_note"] = f"no routing regret: decisions were not recorded; {HOW_TO_RECORD}"
    elif not out["regret"]:
        out["regret_note"] = "no routing decision of an LLM model was recorded, so there is no regret to score"
    return out


_HERDING = re.compile(r"^herding ([0-9.]+)-([0-9.]+) s .*dispatches went to (.+) within ")


def _from_decisions(decisions: pd.DataFrame | None, model: str, detail: str) -> dict[str, Any]:
    """What the decision records add to an episode: for herding, how old the metrics behind the herded picks were
    (`picks_metrics_age_s`: [min, max])."""
    m = _HERDING.match(detail)
    if decisions is None or m is None:
        return {}
    t0, t1, names = float(m.group(1)), float(m.group(2)), m.group(3).split(", ")
    d = decisions
    ages = d[(d["kind"] == "route") & (d["model"] == model) & d["replica"].isin(names)
             & (d["time_s"] >= t0) & (d["time_s"] < t1)]["metrics_age_s"].dropna()  # fmt: skip
    return {"picks_metrics_age_s": [float(ages.min()), float(ages.max())]} if len(ages) else {}


def detect_from_tables(loaded: dict[str, Any]) -> list[Anomaly]:
    """The detectors over a loaded folder's tables, thresholds from its summary's SLOs (the scrape interval and
    bucket are not in a results folder: the defaults apply). Cache stampedes need the engine's lookup log, which
    only a running simulation has, so none are found here."""
    summary = loaded["summary"]
    r = loaded["requests"]
    ends = [summary.get("sim_end_s"), r["finish_s"].max() if len(r) else 0.0, r["arrival_s"].max() if len(r) else 0.0]
    end_s = float(next(v for v in ends if v is not None and v == v))
    tables = RunTables(r, loaded["events"], loaded["timeseries"], loaded["replicas"], end_s)
    return detect(tables, AnomalySettings.from_slos(summary.get("slos")))


def worst_table(regret: dict[str, Any]) -> pd.DataFrame:
    """The worst decisions of every model as one table (model, time, request, attempt, pick, best, regret)."""
    rows = [
        {"model": m, "time_s": w["time_s"], "request_id": w["request_id"], "attempt": w["attempt"],
         "pick": w["pick"], "best": w["best"], "regret_s": w["regret_s"]}
        for m, r in regret.items() for w in r.get("worst", [])
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "time_s", "request_id", "attempt", "pick", "best", "regret_s"])
