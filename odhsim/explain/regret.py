"""Counterfactual regret of routing decisions: how much slower (by the latency model) the picked replica was than
the best candidate, given each candidate's state at that moment as the router saw it.

For each routing decision in decisions.parquet, every candidate that reached the scorers is scored with
`policies.routing.latency_estimate.estimate_ttft_s` (its scraped waiting and running counts, KV usage and the prefix
blocks the router's index credited it with; the request's own prompt; the model's latency coefficients), and

    regret = estimate(picked) - min over the candidates of estimate(candidate)    (seconds, >= 0)

The coefficients come from the model's latency profile; the typical sizes the estimate charges for the requests
it cannot see (work ahead, the running batch) from the model's requests in the run (mean prompt, mean output, and
mean prompt + half the mean output as a running request's context), so every variant of an A/B replaying the
same workload is measured with the same yardstick. `latency-estimate-picker` given these numbers
(`estimate_params`) has zero regret by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from policies.routing.latency_estimate import LatencyEstimateParams, estimate_ttft_array

WORST = 5
"""Decisions listed with their context per model (`summary["regret"][model]["worst"]`)."""
SCORED = ("", "-")
"""`filtered_by` of candidates that competed for the pick ("-": a router without a filter/scorer breakdown)."""


def estimate_params(latency: Any, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> LatencyEstimateParams:
    """The yardstick for one model: `latency`'s coefficients (an odhsim LatencyModel; its CPU terms folded into
    the bases and the per-sequence term, as it adds them) and typical sizes from the model's requests."""
    prompt = float(np.mean(prompt_tokens)) if len(prompt_tokens) else 0.0
    output = float(np.mean(output_tokens)) if len(output_tokens) else 0.0
    cpu_step, cpu_seq = float(getattr(latency, "cpu_step_s", 0.0)), float(getattr(latency, "cpu_per_seq_s", 0.0))
    return LatencyEstimateParams(
        prefill_base_s=latency.prefill_base_s + (cpu_step + cpu_seq),
        prefill_per_token_s=latency.prefill_per_token_s,
        prefill_per_token_sq_s=latency.prefill_per_token_sq_s,
        decode_base_s=latency.decode_base_s + cpu_step,
        decode_per_seq_s=latency.decode_per_seq_s + cpu_seq,
        decode_per_context_token_s=latency.decode_per_context_token_s,
        prefill_knee_tokens=int(latency.prefill_knee_tokens),
        prefill_per_token_above_knee_s=latency.prefill_per_token_above_knee_s,
        typical_prompt_tokens=round(prompt, 3),
        typical_context_tokens=round(prompt + output / 2.0, 3),
        typical_output_tokens=round(output, 3),
    )


def candidate_rows(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per (routing decision, candidate): the decision's keys (`decision` numbers the routing decisions,
    `pick` is the replica chosen) and the candidate's scraped state, read straight from the Arrow list column (the
    per-scorer explosion of odhsim.results.decisions.candidates_frame is not needed here)."""
    routes = decisions[decisions["kind"] == "route"]
    keys = ["time_s", "request_id", "attempt", "model"]
    fields = ["name", "filtered_by", "waiting", "running", "kv_usage", "prefix_blocks"]
    if routes.empty:
        return pd.DataFrame(columns=["decision", *keys, "pick", *fields, "picked"])
    lists = pa.array(routes["candidates"].array)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    parent = pc.list_parent_indices(lists).to_numpy()
    cand = pc.list_flatten(lists)
    out = pd.DataFrame({"decision": parent})
    for k in keys:
        out[k] = routes[k].to_numpy()[parent]
    out["pick"] = routes["replica"].astype(str).to_numpy()[parent]
    for f in fields:
        out[f] = cand.field(f).to_numpy(zero_copy_only=False)
    out["picked"] = out["name"].to_numpy() == out["pick"].to_numpy()
    return out


def regret_frame(
    decisions: pd.DataFrame,
    requests: pd.DataFrame,
    params: dict[str, LatencyEstimateParams],
    block_tokens: int,
) -> pd.DataFrame:
    """Per candidate of every routing decision of a model in `params`: `estimate_s`, and per decision (on every
    row) `best_s`, `chosen_s` and `regret_s`; decisions without a pick, or whose pick was not a scored
    candidate, are left out."""
    rows = candidate_rows(decisions)
    if rows.empty:
        return rows.assign(estimate_s=[], best_s=[], chosen_s=[], regret_s=[])
    rows = rows[rows["filtered_by"].isin(SCORED) & rows["model"].isin(list(params))].reset_index(drop=True)
    prompt = requests.set_index("request_id")["prompt_tokens"]
    prompts = prompt.reindex(rows["request_id"].to_numpy()).to_numpy()
    est = np.empty(len(rows))
    blocks = np.maximum(rows["prefix_blocks"].to_numpy(dtype=np.int64), 0)
    models = rows["model"].astype(str).to_numpy()
    for m, p in params.items():
        mine = models == m
        est[mine] = estimate_ttft_array(p.coefficients(), prompts[mine], blocks[mine] * block_tokens,
                                        rows["waiting"].to_numpy()[mine], rows["running"].to_numpy()[mine],
                                        rows["kv_usage"].to_numpy()[mine])  # fmt: skip
    rows["estimate_s"] = est
    by = rows.groupby("decision", sort=False)
    rows["best_s"] = by["estimate_s"].transform("min")
    chosen = rows.loc[rows["picked"], ["decision", "estimate_s"]].drop_duplicates("decision")
    rows = rows.merge(chosen.rename(columns={"estimate_s": "chosen_s"}), on="decision", how="inner")
    rows["regret_s"] = rows["chosen_s"] - rows["best_s"]
    return rows


def per_decision(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per decision: its keys, pick, chosen/best estimates, regret, the best candidate, candidates."""
    if rows.empty:
        cols = ["time_s", "request_id", "attempt", "model", "pick", "chosen_s", "best_s", "regret_s", "best"]
        return pd.DataFrame(columns=[*cols, "candidates"])
    best = rows.loc[rows.groupby("decision", sort=False)["estimate_s"].idxmin(), ["decision", "name"]]
    first = rows.drop_duplicates("decision").merge(best.rename(columns={"name": "best"}), on="decision")
    first["candidates"] = first["decision"].map(rows.groupby("decision").size())
    cols = ["time_s", "request_id", "attempt", "model", "pick", "chosen_s", "best_s", "regret_s", "best", "candidates"]
    return first[cols].reset_index(drop=True)


def regret_summary(rows: pd.DataFrame, policy: dict[str, str]) -> dict[str, Any]:
    """`summary["regret"]`: per model its policy, decisions scored, p50 / p90 / mean regret, the share of
    decisions with regret > 0, and the WORST decisions with regret > 0 with their context (every candidate's state
    and estimate)."""
    out: dict[str, Any] = {}
    decisions = per_decision(rows)
    for model, d in decisions.groupby("model", sort=True, observed=True):
        r = d["regret_s"].to_numpy(dtype=np.float64)
        worst = []
        for _, w in d[d["regret_s"] > 0].nlargest(WORST, "regret_s").iterrows():
            mine = rows[(rows["time_s"] == w["time_s"]) & (rows["request_id"] == w["request_id"])
                        & (rows["attempt"] == w["attempt"])]  # fmt: skip
            state = {c["name"]: {"waiting": int(c["waiting"]), "running": int(c["running"]),
                                 "kv_usage": float(c["kv_usage"]), "prefix_blocks": int(c["prefix_blocks"]),
                                 "estimate_s": float(c["estimate_s"])}
                     for _, c in mine.iterrows()}  # fmt: skip
            worst.append({"time_s": float(w["time_s"]), "request_id": int(w["request_id"]),
                          "attempt": int(w["attempt"]), "pick": str(w["pick"]), "best": str(w["best"]),
                          "regret_s": float(w["regret_s"]), "candidates": state})  # fmt: skip
        out[str(model)] = {
            "policy": policy.get(str(model), ""),
            "decisions": len(r),
            "p50_s": float(np.percentile(r, 50)),
            "p90_s": float(np.percentile(r, 90)),
            "mean_s": float(r.mean()),
            "share_positive": float((r > 0).mean()),
            "worst": worst,
        }
    return out


def pooled(rows: pd.DataFrame) -> dict[str, float]:
    """Top-level summary keys over every scored decision (what `odhsim compare` compares): regret_mean_s,
    regret_p90_s, regret_share_positive (NaN without decisions)."""
    r = per_decision(rows)["regret_s"].to_numpy(dtype=np.float64)
    if len(r) == 0:
        nan = float("nan")
        return {"regret_mean_s": nan, "regret_p90_s": nan, "regret_share_positive": nan}
    return {
        "regret_mean_s": float(r.mean()),
        "regret_p90_s": float(np.percentile(r, 90)),
        "regret_share_positive": float((r > 0).mean()),
    }


def run_regret(
    decisions: pd.DataFrame | None,
    requests: pd.DataFrame,
    latency_by_model: dict[str, Any],
    block_tokens: int,
    policy: dict[str, str],
) -> dict[str, Any]:
    """The summary's regret keys for a run: `regret` (per model), the pooled regret_* keys, and `regret_params`
    (the yardstick: block tokens and each model's estimate parameters, so `odhsim explain` can score the
    decisions again). Empty without decisions; models without a latency model (fixed ones) are left out."""
    if decisions is None or not (decisions["kind"] == "route").any():
        return {}
    models = requests["model"].astype(str).to_numpy()
    params = {
        m: estimate_params(lat, requests["prompt_tokens"].to_numpy()[models == m],
                           requests["output_tokens"].to_numpy()[models == m])
        for m, lat in latency_by_model.items()
    }  # fmt: skip
    rows = regret_frame(decisions, requests, params, block_tokens)
    return {
        "regret": regret_summary(rows, policy),
        **pooled(rows),
        "regret_params": {"block_tokens": block_tokens, "models": {m: p.model_dump() for m, p in params.items()}},
    }


def decision_regrets(decisions: pd.DataFrame, requests: pd.DataFrame, summary: dict[str, Any]) -> pd.DataFrame:
    """Per routing decision of a finished run (`per_decision`), scored with the yardstick the run kept in
    `summary["regret_params"]`; empty when the run recorded no decisions."""
    kept = summary.get("regret_params") or {}
    if decisions is None or not kept.get("models"):
        return per_decision(pd.DataFrame())
    params = {m: LatencyEstimateParams(**p) for m, p in kept["models"].items()}
    return per_decision(regret_frame(decisions, requests, params, int(kept["block_tokens"])))
