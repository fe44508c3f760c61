"""The shipped lifecycle scenarios do what their comments say (rush hour, budget cap, big model, scale to zero)."""

from __future__ import annotations

import pytest

from odhsim.results.run_result import RunResult
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from tests.conftest import REPO_ROOT


def run(name: str, *overrides: str) -> RunResult:
    return simulate(load_scenario(REPO_ROOT / "scenarios" / f"{name}.yaml", list(overrides)))


@pytest.fixture(scope="module")
def rush() -> RunResult:
    return run("rush_hour")


def test_rush_hour_panics_scales_out_and_drains_back(rush: RunResult) -> None:
    s, ts, ev = rush.summary, rush.timeseries, rush.events
    assert s["requests"] == s["completed"]
    before = ts[ts["time_s"] < 880]["ready_replicas"].max()
    during = ts[(ts["time_s"] > 960) & (ts["time_s"] < 1500)]["ready_replicas"].min()
    after = ts[ts["time_s"] > 2200]["ready_replicas"].max()
    assert before <= 2 and during >= 6 and after <= 2
    assert ev["detail"].str.contains("panic").any()
    assert ev.loc[ev["kind"] == "start", "detail"].str.startswith("cold").sum() >= 1
    assert {"draining", "gone"} <= set(rush.replicas["state"])


def test_budget_cap_queues_instead_of_spending(rush: RunResult) -> None:
    capped = run("budget_cap")
    s, ts = capped.summary, capped.timeseries
    assert s["requests"] == s["completed"]
    assert (ts["gpus"] <= 4).all()  # $21/h buys four A100-80GB replicas at $5.12/GPU-hour
    assert (capped.events["kind"] == "budget").any()
    assert s["cost_usd"] < rush.summary["cost_usd"] and s["e2e_p99_s"] > rush.summary["e2e_p99_s"]


def test_big_model_needs_tensor_parallelism_and_is_rejected_on_one_small_gpu() -> None:
    res = run("big_model")
    deploy = res.events[res.events["kind"] == "deploy"].set_index("model")["detail"]
    assert deploy["big-tp4"].startswith("approved") and "4 x H100-80GB" in deploy["big-tp4"]
    assert deploy["big-on-l40s"].startswith("rejected") and "does not fit 1 x L40S" in deploy["big-on-l40s"]
    r = res.requests
    on_l40s = r[r["model"] == "big-on-l40s"]
    assert (on_l40s["status"] == "ok").all() and on_l40s["fallback"].all()
    assert not r.loc[r["model"] == "big-tp4", "fallback"].any()


def test_unused_models_go_to_zero_at_night_and_come_back() -> None:
    res = run("scale_to_zero", "duration_s=43200", *(f"workload.sources[{i}].duration_s=43200" for i in range(3)))
    ts, r = res.timeseries, res.requests
    assert (r["status"] == "ok").all()
    night = ts[ts["time_s"] < 3600].pivot_table(index="time_s", columns="model", values="ready_replicas", observed=True)
    assert (night["chat"] >= 1).all()  # min_replicas 1
    assert (night["translate"] == 0).mean() > 0.5 and (night["vision"] == 0).mean() > 0.5
    noon = ts[(ts["time_s"] > 36000) & (ts["time_s"] < 43200)]
    assert noon.groupby("model", observed=True)["ready_replicas"].max().min() >= 1
    starts = res.events[res.events["kind"] == "start"]
    assert len(starts) > 0 and starts["detail"].str.startswith("warm").all()  # the node cache kept the weights
