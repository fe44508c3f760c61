"""Canary rollouts (KServe canaryTrafficPercent): the split policies on hand-countable sequences, the shipped
scenario doing what its comment says, promote / rollback draining without losing a request, common random numbers,
and scenario errors that name the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.errors import ScenarioError
from odhsim.results.run_result import RunResult, load_results
from odhsim.results.summary import by_version, latency_columns
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.sim.run import simulate
from policies.builtin import REGISTRY
from policies.routing.canary import LATEST, PREVIOUS, SmoothWeightedSplit, WeightedRandomSplit
from tests.conftest import REPO_ROOT

CANARY_YAML = REPO_ROOT / "scenarios" / "canary.yaml"
LENGTHS = {
    "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.7, "max": 6000},
    "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.7, "max": 800},
}
V2_ON_L4 = {"version": "v2", "traffic_percent": 40, "start_s": 10, "gpu": "L4", "storage_uri": "s3://m/v2"}


def chat(canary: dict[str, Any] | None, actions: list[dict[str, Any]], rate: float = 4.0, **extra: Any) -> RunResult:
    """chat (2 x llama3.1-8b on A100-80GB, 300 s of Poisson arrivals) with a canary and timed actions."""
    gateway = extra.pop("gateway", {})
    model = {"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB", "replicas": 2,
             "engine": {"max_model_len": 8192}, "storage_uri": "s3://m/v1", **extra}  # fmt: skip
    if canary is not None:
        model["canary"] = canary
    sc = {
        "name": "c",
        "seed": 2,
        "duration_s": 300,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 8}, {"gpu": "L4", "count": 2}],
        "models": [model],
        "actions": actions,
        "gateway": gateway,
        "workload": {"sources": [{"kind": "poisson", "rate": rate, "duration_s": 300, **LENGTHS}]},
        "outputs": {"timeseries_bucket_s": 10},
    }
    return simulate(scenario_from_dict(sc))


def events_of(res: RunResult, *kinds: str) -> pd.DataFrame:
    return res.events[res.events["kind"].isin(kinds)]


def final_states(res: RunResult) -> dict[str, str]:
    states = res.replicas[res.replicas["state"] != "stopped"]
    return states.groupby("replica", observed=True)["state"].last().to_dict()


def accounted(res: RunResult) -> bool:
    s = res.summary
    return s["in_flight_at_stop"] == 0 and s["requests"] == s["completed"] + s["failed"] + s["shed"] + s["timeout"]


# --- the split policies -------------------------------------------------------------------------------------


def test_smooth_weighted_sends_exactly_every_fourth_request_at_25_percent() -> None:
    split = SmoothWeightedSplit()
    picks = [split.pick(0.0, 25.0) for _ in range(12)]
    assert picks == [PREVIOUS, PREVIOUS, PREVIOUS, LATEST] * 3
    assert [SmoothWeightedSplit().pick(0.0, 100.0) for _ in range(3)] == [LATEST] * 3
    assert [SmoothWeightedSplit().pick(0.0, 0.0) for _ in range(3)] == [PREVIOUS] * 3
    ten = SmoothWeightedSplit()
    assert sum(ten.pick(0.0, 10.0) for _ in range(1000)) == 100


def test_weighted_random_draws_once_per_request_so_shares_nest() -> None:
    def canary_set(percent: float) -> set[int]:
        split = WeightedRandomSplit(np.random.default_rng(5))
        return {i for i in range(4000) if split.pick(0.0, percent) == LATEST}

    ten, thirty = canary_set(10.0), canary_set(30.0)
    assert ten < thirty  # the same uniforms: whoever goes to a 10% canary also goes to a 30% one
    assert abs(len(ten) / 4000 - 0.10) < 0.015 and abs(len(thirty) / 4000 - 0.30) < 0.025
    assert canary_set(0.0) == set() and canary_set(100.0) == set(range(4000))
    with pytest.raises(ValueError, match="percent"):
        WeightedRandomSplit(np.random.default_rng(0)).pick(0.0, 101.0)


def test_split_policies_are_registered() -> None:
    assert REGISTRY.names("traffic-split") == ["smooth-weighted", "weighted-random"]
    built = REGISTRY.build("traffic-split", "smooth-weighted", {}, np.random.default_rng(0))
    assert isinstance(built, SmoothWeightedSplit)


# --- the shipped scenario -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary_run() -> RunResult:
    return simulate(load_scenario(CANARY_YAML))


def test_canary_scenario_splits_rolls_back_and_promotes(canary_run: RunResult) -> None:
    res = canary_run
    r = res.requests
    assert res.summary["requests"] == res.summary["completed"]  # nothing lost through rollback or promotion
    ready = events_of(res, "canary")
    ready_at = {
        m: float(g["time_s"].iloc[-1]) for m, g in ready[ready["detail"].str.contains("ready")].groupby("model")
    }
    # the cold start of v2 (download from s3, load, test: 13.2 s) comes before any traffic moves
    assert ready_at == {"summarize": pytest.approx(73.2067, abs=1e-3), "chat": pytest.approx(133.2067, abs=1e-3)}
    c = r[r["model"] == "chat"]
    assert (c.loc[c["arrival_s"] < ready_at["chat"], "version"] == "v1").all()
    live = c[(c["arrival_s"] > ready_at["chat"]) & (c["arrival_s"] < 600)]
    assert 0.08 < (live["version"] == "v2").mean() < 0.12  # canaryTrafficPercent 10
    assert (c.loc[c["arrival_s"] > 600, "version"] == "v1").all()  # rolled back at 600 s
    s = r[r["model"] == "summarize"]
    step = s[(s["arrival_s"] > 400) & (s["arrival_s"] < 700)]
    assert 0.45 < (step["version"] == "v2").mean() < 0.55  # the traffic action at 400 s: 50%
    assert (s.loc[s["arrival_s"] > 700, "version"] == "v2").all()  # promoted at 700 s
    states = final_states(res)
    assert states["chat-v2-0"] == "gone" and states["summarize-v1-0"] == states["summarize-v1-1"] == "gone"
    assert states["chat-v1-0"] == "ready" and states["summarize-v2-0"] == "ready"
    assert (res.replicas.loc[res.replicas["replica"] == "chat-v2-0", "state"] == "draining").any()
    kinds = dict(zip(events_of(res, "traffic", "rollback", "promote")["kind"],
                     events_of(res, "traffic", "rollback", "promote")["time_s"], strict=True))  # fmt: skip
    assert kinds == {"traffic": 400.0, "rollback": 600.0, "promote": 700.0}


def test_the_slower_canary_shows_in_its_latency(canary_run: RunResult) -> None:
    r = canary_run.requests
    ttft = latency_columns(r)["ttft_s"]
    chat = r["model"] == "chat"
    p99 = {v: float(ttft[chat & (r["version"] == v)].quantile(0.99)) for v in ("v1", "v2")}
    assert p99["v2"] > 5 * p99["v1"]  # v2 runs on one L4: a tenth of the traffic still queues there
    ts = canary_run.timeseries
    during = ts[(ts["model"] == "chat") & (ts["time_s"] > 140) & (ts["time_s"] < 600)]
    assert (during["gpus"] == 4).all() and (during["ready_replicas"] == 4).all()  # 3 x A100 + 1 x L4
    # cost per 10 s bucket: 3 A100-80GB at $5.1207/h and one L4 at its own price
    l4 = 0.8048  # catalogue $/GPU-hour of the L4
    assert during["cost_usd"].iloc[0] == pytest.approx((3 * 5.1207 + l4) * 10 / 3600, rel=1e-3)


def test_same_seed_same_results_and_the_split_moves_no_other_random_numbers(canary_run: RunResult) -> None:
    again = simulate(load_scenario(CANARY_YAML))
    pd.testing.assert_frame_equal(canary_run.requests, again.requests)
    pd.testing.assert_frame_equal(canary_run.events, again.events)
    wider = simulate(load_scenario(CANARY_YAML, ["models[0].canary.traffic_percent=30"]))
    a, b = canary_run.requests, wider.requests
    # summarize shares nothing with chat's split: every one of its requests is served exactly as before
    cols = ["arrival_s", "first_token_s", "finish_s", "replica", "version"]
    sa, sb = (x.loc[x["model"] == "summarize", cols].astype(object) for x in (a, b))
    assert sa.equals(sb)
    to_v2 = {
        p: set(x.loc[(x["model"] == "chat") & (x["version"] == "v2"), "request_id"]) for p, x in ((10, a), (30, b))
    }
    assert to_v2[10] < to_v2[30]  # one draw per request from `canary.chat`: the 10% canary's requests nest


def test_version_column_round_trips_through_parquet(canary_run: RunResult, tmp_path: Path) -> None:
    loaded = load_results(canary_run.write(tmp_path))
    versions = loaded["requests"]["version"]
    assert list(versions.cat.categories) == ["v1", "v2"] and versions.notna().all()
    assert set(loaded["events"]["kind"]) >= {"deploy", "canary", "traffic", "rollback", "promote"}


# --- promote and rollback mechanics -------------------------------------------------------------------------


def test_promote_before_the_canary_is_ready_waits_for_it() -> None:
    canary = {"version": "v2", "traffic_percent": 10, "start_s": 10, "storage_uri": "s3://m/v2"}
    res = chat(canary, [{"at_s": 12, "action": "promote", "model": "chat"}])
    promote = events_of(res, "promote")
    assert promote["detail"].iloc[0].startswith("v2 promoted before it is ready")
    switch = float(promote["time_s"].iloc[1])
    assert switch == pytest.approx(10 + 13.2067, abs=1e-3)  # the moment the first v2 replica was ready
    r = res.requests
    assert (r.loc[r["arrival_s"] < switch, "version"] == "v1").all()
    assert (r.loc[r["arrival_s"] > switch, "version"] == "v2").all()
    assert res.summary["requests"] == res.summary["completed"]
    states = final_states(res)
    assert states["chat-v1-0"] == states["chat-v1-1"] == "gone"


def test_a_canary_rejected_at_deploy_never_takes_traffic() -> None:
    canary = {"version": "v2", "traffic_percent": 50, "start_s": 10, "profile": "llama3-70b", "gpu": "L4"}
    res = chat(canary, [{"at_s": 100, "action": "promote", "model": "chat"}])
    deploy = events_of(res, "deploy")["detail"].tolist()
    assert deploy[1].startswith("v2: rejected: llama3-70b") and "does not fit 1 x L4" in deploy[1]
    assert events_of(res, "promote")["detail"].iloc[0] == (
        "v2 was rejected at deploy: nothing to promote, v1 keeps all traffic"
    )
    assert (res.requests["version"] == "v1").all() and res.summary["requests"] == res.summary["completed"]


@pytest.mark.parametrize("flow_control", [False, True], ids=["fifo", "flow-control"])
def test_rollback_moves_requests_waiting_for_the_canary_and_loses_none(flow_control: bool) -> None:
    gateway: dict[str, Any] = {"max_in_flight_per_replica": 2}
    if flow_control:
        gateway["flow_control"] = {}
    res = chat(V2_ON_L4, [{"at_s": 150, "action": "rollback", "model": "chat"}], rate=6.0, gateway=gateway)
    detail = events_of(res, "rollback")["detail"].iloc[0]
    moved = int(detail.split("moved ")[1].split(" ")[0])
    assert moved > 50  # the two L4 replicas hold 2 each; the rest of v2's share waited at the gateway
    assert accounted(res) and res.summary["failed"] == 0
    r = res.requests
    assert (r.loc[r["arrival_s"] > 150, "version"] == "v1").all()
    routed = r[r["replica"].notna()]
    on_v2 = routed["replica"].astype(str).str.startswith("chat-v2")
    assert ((routed["version"] == "v2") == on_v2).all()  # the version column names the revision that served it
    unrouted_later = r[r["replica"].isna() & (r["finish_s"] > 150)]
    assert (unrouted_later["version"] == "v1").all()  # what waited for v2 at the rollback moved to v1


def test_autoscaled_canary_gets_its_own_autoscaler_and_the_old_one_stops() -> None:
    autoscaling = {"type": "kpa", "params": {"min_replicas": 1, "max_replicas": 4, "container_concurrency": 8}}
    canary = {"version": "v2", "traffic_percent": 50, "start_s": 10, "storage_uri": "s3://m/v2"}
    res = chat(canary, [{"at_s": 150, "action": "promote", "model": "chat"}], rate=10.0, autoscaling=autoscaling)
    assert res.summary["requests"] == res.summary["completed"]
    starts = events_of(res, "start")
    assert starts["replica"].str.startswith("chat-v2").any()
    after = starts[starts["time_s"] > 150]
    assert not after["replica"].str.startswith("chat-v1").any()  # v1's autoscaler stopped at promotion
    assert all(s == "gone" for name, s in final_states(res).items() if name.startswith("chat-v1"))


def test_fixed_model_canary_serves_with_its_own_service_time() -> None:
    sc = {
        "name": "fixed-canary",
        "seed": 4,
        "duration_s": 200,
        "gpu_pool": [{"gpu": "T4", "count": 2}],
        "models": [
            {
                "name": "clf",
                "kind": "fixed",
                "gpu": "T4",
                "concurrency": 64,
                "service_time": {"dist": "deterministic", "mean_s": 0.1},
                "canary": {
                    "version": "v2",
                    "traffic_percent": 25,
                    "split": "smooth-weighted",
                    "service_time": {"dist": "deterministic", "mean_s": 0.5},
                },
            }
        ],
        "workload": {"sources": [{"kind": "poisson", "rate": 5.0, "duration_s": 200, **LENGTHS}]},
    }
    res = simulate(scenario_from_dict(sc))
    r = res.requests
    e2e = latency_columns(r)["e2e_s"]
    ready = float(events_of(res, "canary")["time_s"].iloc[-1])
    after = r["arrival_s"] > ready
    assert np.allclose(e2e[r["version"] == "v1"], 0.1) and np.allclose(e2e[r["version"] == "v2"], 0.5)
    n_v2, n_after = int((r.loc[after, "version"] == "v2").sum()), int(after.sum())
    assert n_v2 == n_after // 4  # smooth-weighted at 25%: exactly every fourth request after the canary is ready


# --- scenario errors name the field -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("model: chat}", "model: chatt}", "line 51: actions[1].model: unknown model 'chatt'; known: chat, summarize"),
        ("traffic_percent: 10\n      start_s: 120", "traffic_percent: 150\n      start_s: 120",
         "line 29: models[0].canary.traffic_percent: Input should be less than or equal to 100"),
        ("at_s: 700", "at_s: 9000", "line 52: actions[2].at_s: at_s=9000 is beyond the scenario's duration_s=900"),
        ("at_s: 400", "at_s: 30", "line 50: actions[0].at_s: at_s=30 is before model 'summarize''s canary starts"),
        ("percent: 50}", "percent: 50, extra: 1}", "line 50: actions[0].extra: unknown field 'extra'"),
        ("action: promote, model: summarize}", "action: rollback, model: chat}",
         "line 52: actions[2].action: model 'chat''s rollout already ended (promote or rollback at 600 s)"),
        ("version: v2\n      traffic_percent: 10\n      start_s: 120",
         "version: v1\n      traffic_percent: 10\n      start_s: 120",
         "line 28: models[0].canary.version: model 'chat': the canary's version must differ from the model's ('v1')"),
        ("      gpu: L4\n", "      gpu: T4\n", "line 32: models[0].canary.gpu: model 'chat' wants T4, which gpu_pool"),
        ("      gpu: L4\n", "      gpu: L4\n      split: sticky\n",
         "line 33: models[0].canary.split: unknown traffic-split policy 'sticky'"),
        ("      gpu: L4\n", "      gpu: L4\n      tp: 3\n", "line 33: models[0].canary.tp: model 'chat': tp=3 exceeds"),
        ("model: summarize, percent: 50}", "model: summarize}",
         "line 50: actions[0].percent: a `traffic` action needs `percent`"),
    ],
)  # fmt: skip
def test_scenario_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = CANARY_YAML.read_text()
    assert old in text
    bad = tmp_path / "canary.yaml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert str(err.value).startswith(str(bad)) and expected in str(err.value), str(err.value)


def test_an_action_for_a_model_without_a_canary_is_refused() -> None:
    sc = {
        "name": "x",
        "gpu_pool": [{"gpu": "A100-80GB", "count": 1}],
        "models": [{"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB"}],
        "actions": [{"at_s": 5, "action": "promote", "model": "chat"}],
        "workload": {"sources": [{"kind": "poisson", "rate": 1.0, "duration_s": 10}]},
    }
    with pytest.raises(ScenarioError, match=r"actions\[0\]\.model: model 'chat' has no canary to promote"):
        scenario_from_dict(sc)


def test_by_version_table_on_hand_made_rows() -> None:
    rows = pd.DataFrame(
        {
            "model": pd.Categorical(["chat"] * 4),
            "version": pd.Categorical(["v1", "v1", "v2", ""]),
            "status": pd.Categorical(["ok", "ok", "failed", "ok"]),
            "arrival_s": [0.0, 1.0, 2.0, 3.0],
            "first_token_s": [0.5, 1.1, float("nan"), 3.2],
            "finish_s": [2.0, 1.5, float("nan"), 4.0],
            "output_tokens": [10, 10, 10, 10],
        }
    )
    table = by_version(rows).set_index("version")
    assert list(table.index) == ["v1", "v2"]  # the row without a version (in flight at a hard stop) is left out
    assert table.loc["v1", "requests"] == 2 and table.loc["v1", "ok"] == 2
    assert table.loc["v1", "ttft_p50_s"] == pytest.approx(0.3)  # median of 0.5 and 0.1
    assert table.loc["v1", "e2e_p99_s"] == pytest.approx(0.5 + 0.99 * (2.0 - 0.5))
    assert table.loc["v2", "ok"] == 0 and math.isnan(table.loc["v2", "ttft_p99_s"])
