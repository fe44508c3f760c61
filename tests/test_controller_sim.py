"""Replica lifecycles and autoscaling inside the simulator: nothing lost through scale up, drain and scale to zero;
warm starts beat cold ones; GPUs held never exceed the pool; every transition is a legal one."""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from policies.lifecycle.states import LEGAL_TRANSITIONS

LENGTHS = {
    "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.7, "max": 6000},
    "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.7, "max": 800},
}


def rush_scenario(**autoscaler_params: Any) -> dict[str, Any]:
    params = {"min_replicas": 1, "max_replicas": 10, "container_concurrency": 16} | autoscaler_params
    return {
        "name": "rush",
        "seed": 1,
        "duration_s": 1200,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 8, "model_cache_gb": 100}],
        "models": [
            {
                "name": "chat",
                "profile": "llama3.1-8b",
                "gpu": "A100-80GB",
                "replicas": 1,
                "autoscaling": {"type": "kpa", "params": params},
            },
        ],
        "workload": {
            "sources": [
                {"kind": "poisson", "rate": 2.0, "duration_s": 1200, **LENGTHS},
                {"kind": "poisson", "name": "rush", "rate": 16.0, "start_s": 300, "duration_s": 300, **LENGTHS},
            ]
        },
        "outputs": {"timeseries_bucket_s": 10},
    }


def transitions(replicas: pd.DataFrame) -> set[tuple[str, str]]:
    moves = set()
    for _, g in replicas.groupby("replica", observed=True):
        states = [s for s in g.sort_values("time_s", kind="stable")["state"] if s != "stopped"]
        moves |= set(itertools.pairwise(states))
    return moves


def test_rush_hour_scales_up_then_drains_without_losing_a_request() -> None:
    res = simulate(scenario_from_dict(rush_scenario()))
    s, ts = res.summary, res.timeseries
    assert s["requests"] == s["completed"] > 3000  # nothing shed, failed or lost through scaling
    during = ts[(ts["time_s"] > 400) & (ts["time_s"] <= 600)]
    after = ts[ts["time_s"] > 1000]
    assert during["ready_replicas"].max() >= 4
    assert after["ready_replicas"].max() <= 2
    assert (ts["gpus"] <= 8).all()  # never more GPUs than the pool has
    assert transitions(res.replicas) <= LEGAL_TRANSITIONS
    assert {"draining", "gone"} <= set(res.replicas["state"])
    assert (res.events["kind"] == "scale").any()


def test_scale_to_zero_and_back_with_the_activator_holding_requests() -> None:
    sc = rush_scenario(min_replicas=0)
    sc["models"][0]["replicas"] = 1
    sc["workload"]["sources"] = [
        {"kind": "poisson", "rate": 3.0, "duration_s": 120, **LENGTHS},
        {"kind": "poisson", "name": "later", "rate": 3.0, "start_s": 600, "duration_s": 120, **LENGTHS},
    ]
    res = simulate(scenario_from_dict(sc))
    s, ts, r = res.summary, res.timeseries, res.requests
    assert s["requests"] == s["completed"]
    idle = ts[(ts["time_s"] > 400) & (ts["time_s"] <= 590)]
    assert (idle["ready_replicas"] == 0).all() and (idle["gpus"] == 0).all() and (idle["cost_usd"] == 0).all()
    first_back = r[r["arrival_s"] >= 600].iloc[0]
    ttft = first_back["first_token_s"] - first_back["arrival_s"]
    assert 2.0 < ttft < 30.0  # it waited for a (warm) start at the activator, then was served


def test_warm_start_is_faster_than_cold_start() -> None:
    sc = rush_scenario()
    sc["gpu_pool"][0]["model_cache_gb"] = 0  # no node cache: every start downloads
    cold = simulate(scenario_from_dict(sc)).events
    warm = simulate(scenario_from_dict(rush_scenario())).events

    def start_seconds(events: pd.DataFrame, kind: str) -> list[float]:
        starts = events[(events["kind"] == "start") & events["detail"].str.startswith(kind)]
        return [float(d.split(": ")[1].split(" s")[0]) for d in starts["detail"]]

    cold_s, warm_s = start_seconds(cold, "cold"), start_seconds(warm, "warm")
    assert cold_s and warm_s and not start_seconds(cold, "warm")
    assert min(cold_s) > 2 * max(warm_s)


def test_budget_cap_is_never_exceeded_and_requests_queue_instead() -> None:
    sc = rush_scenario()
    price = 5.1207  # A100-80GB $/GPU-hour in the catalogue
    sc["budget_usd_per_hour"] = 3 * price + 0.01  # room for three replicas
    res = simulate(scenario_from_dict(sc))
    s, ts, ev = res.summary, res.timeseries, res.events
    assert s["requests"] == s["completed"]  # nothing lost: the excess waited
    assert (ts["gpus"] <= 3).all()
    # spend integrated over each 10 s bucket stays within the cap (a replica leaving mid-bucket is still charged)
    assert (ts["cost_usd"] <= sc["budget_usd_per_hour"] * 10 / 3600 + 1e-12).all()
    refused = ev[ev["kind"] == "budget"]
    assert len(refused) >= 1 and refused["detail"].str.contains("budget").all()
    unlimited = simulate(scenario_from_dict(rush_scenario())).summary
    # the capped fleet costs less and its requests take longer (bigger batches on fewer replicas)
    assert s["cost_usd"] < unlimited["cost_usd"]
    assert s["e2e_p50_s"] > unlimited["e2e_p50_s"]


def test_drain_timeout_fails_what_is_left_with_the_reason() -> None:
    sc = rush_scenario()
    sc["models"][0]["drain_timeout_s"] = 0.5  # far shorter than a request: a drained replica still holds some
    res = simulate(scenario_from_dict(sc))
    r, s = res.requests, res.summary
    cut = r[r["reason"].astype(str).str.startswith("drain timeout")]
    assert len(cut) > 0 and (cut["status"] == "failed").all()
    assert s["requests"] == s["completed"] + s["failed"] and s["failed"] == len(cut)
    assert (res.replicas["state"] == "gone").sum() >= 1
    assert (res.timeseries["gpus"] <= 8).all()
    patient = simulate(scenario_from_dict(rush_scenario())).summary  # the default 300 s lets every drain finish
    assert patient["failed"] == 0
