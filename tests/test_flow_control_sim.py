"""Flow control inside the simulator: priority under overload, weighted fair sharing, TTL expiry, fallback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from tests.conftest import fixed_model_scenario
from tests.test_engine import llm_scenario

EQUAL_CLASSES = {"critical": 1, "high": 1, "normal": 1, "low": 1}


def overloaded_llm(flow_control: dict[str, Any] | None) -> dict[str, Any]:
    sc = llm_scenario(duration_s=300, seed=5)
    sc["models"][0]["replicas"] = 1
    sc["workload"]["sources"][0]["rate"] = 12.0  # about twice what one llama3-8b replica serves
    sc["workload"]["priorities"] = {"critical": 1, "high": 1, "normal": 2, "low": 4}
    sc["gateway"] = {"router": {"profile": "llm-d-default"}, "flow_control": flow_control}
    sc["hard_stop_s"] = 900
    return sc


def ttft_by_class(requests) -> dict[str, float]:  # type: ignore[no-untyped-def]
    ok = requests[requests["status"] == "ok"]
    ttft = ok["first_token_s"] - ok["arrival_s"]
    return ttft.groupby(ok["priority"], observed=True).quantile(0.9).to_dict()


def test_critical_keeps_its_ttft_target_while_low_is_shed_or_delayed() -> None:
    # The concurrency detector counts requests at dispatch, so it is never stale: the gateway holds what the
    # replica cannot take, and the priority bands decide who goes next.
    flow = {
        "queue": "strict-priority",
        "admission": "shed-sheddable",
        "saturation": {"type": "concurrency", "params": {"max_concurrency": 64}},
        "ttl_s": {"low": 30, "normal": 120},
    }
    res = simulate(scenario_from_dict(overloaded_llm(flow)))
    r = res.requests
    p90 = ttft_by_class(r)
    assert p90["critical"] < 1.0, p90  # the critical class's TTFT target (scenario default SLO)
    assert p90["high"] < 3.0, p90
    low = r[r["priority"] == "low"]
    low_ok = low[low["status"] == "ok"]
    shed_or_late = (low["status"] != "ok").mean() + (
        (low_ok["first_token_s"] - low_ok["arrival_s"]) > 10.0
    ).sum() / len(low)
    assert shed_or_late > 0.5
    assert set(r.loc[r["status"] == "shed", "priority"].unique()) <= {"low"}  # only sheddable requests are shed
    assert (r.loc[r["status"].isin(["shed", "timeout"]), "reason"] != "").all()
    s = res.summary
    assert s["requests"] == s["completed"] + s["shed"] + s["failed"] + s["timeout"] + s["in_flight_at_stop"]

    fcfs = simulate(scenario_from_dict(overloaded_llm(None)))
    assert ttft_by_class(fcfs.requests)["critical"] > 10 * p90["critical"]  # without flow control all classes wait


@pytest.mark.parametrize("queue", ["wfq-class"])
def test_weighted_fair_sharing_gives_each_class_its_share_when_backlogged(queue: str) -> None:
    # offered load 4.0 split equally: every class (critical too: 4 req/s > 80% of 4 req/s) stays backlogged
    sc = fixed_model_scenario(servers=4, rate=16.0, requests=40_000, limit=1, seed=9)
    sc["workload"]["priorities"] = EQUAL_CLASSES
    sc["gateway"]["flow_control"] = {"queue": queue, "ttl_s": {}, "gate_dispatch_on_saturation": False}
    r = simulate(scenario_from_dict(sc)).requests
    # every class is backlogged from early on until arrivals stop (2,500 s): count service starts in between
    window = r[(r["start_s"] > 200) & (r["start_s"] < 2400)]
    share = window["priority"].value_counts(normalize=True).reindex(["critical", "high", "normal", "low"])
    expected = np.array([0.80, 0.15, 0.04, 0.01])
    assert np.allclose(share.to_numpy(), expected, rtol=0.05, atol=0.002), share.to_dict()


def test_ttl_expiry_counts_as_timeout() -> None:
    sc = fixed_model_scenario(servers=1, rate=3.0, requests=600, limit=1, seed=2)
    sc["gateway"]["flow_control"] = {"queue": "fcfs", "ttl_s": {"normal": 5.0}, "gate_dispatch_on_saturation": False}
    res = simulate(scenario_from_dict(sc))
    r, s = res.requests, res.summary
    timed_out = r[r["status"] == "timeout"]
    assert s["timeout"] == len(timed_out) > 100
    assert np.allclose(timed_out["finish_s"] - timed_out["arrival_s"], 5.0)
    served = r[r["status"] == "ok"]
    assert ((served["start_s"] - served["arrival_s"]) <= 5.0 + 1e-9).all()
    assert s["requests"] == s["completed"] + s["timeout"]


def test_fallback_model_serves_a_model_without_replicas() -> None:
    sc = llm_scenario(duration_s=60)
    sc["models"] = [
        {"name": "big", "profile": "llama3-8b", "gpu": "A100-80GB", "replicas": 0, "fallback": "small"},
        {"name": "small", "profile": "llama3.2-1b", "gpu": "A100-80GB", "replicas": 1},
    ]
    sc["workload"]["models"] = {"big": 1, "small": 1}
    r = simulate(scenario_from_dict(sc)).requests
    big = r[r["model"] == "big"]
    assert (big["status"] == "ok").all() and big["fallback"].all()
    assert big["replica"].astype(str).str.startswith("small-").all()
    assert not r.loc[r["model"] == "small", "fallback"].any()


def test_open_breaker_sends_requests_to_the_fallback_model() -> None:
    sc = llm_scenario(duration_s=120)
    sc["models"] = [
        # the primary refuses most prompts (max_model_len 1024): consecutive failures open its breaker
        {"name": "big", "profile": "llama3-8b", "gpu": "A100-80GB", "replicas": 1, "fallback": "small",
         "engine": {"max_model_len": 1024}},
        {"name": "small", "profile": "llama3.2-1b", "gpu": "A100-80GB", "replicas": 1},
    ]  # fmt: skip
    sc["workload"]["models"] = {"big": 1}
    sc["workload"]["sources"][0]["prompt_tokens"] = {"dist": "lognormal", "median": 2000, "sigma": 0.3, "max": 8000}
    sc["gateway"]["resilience"] = {"breaker": {"type": "consecutive-failures", "params": {"cooldown_s": 30}}}
    res = simulate(scenario_from_dict(sc))
    r, events = res.requests, res.events
    transitions = events.loc[events["kind"] == "breaker", "detail"].tolist()
    assert transitions[:3] == ["closed -> open", "open -> half_open", "half_open -> open"]
    opened = events.loc[events["kind"] == "breaker", "time_s"].iloc[0]
    after = r[(r["arrival_s"] > opened) & (r["arrival_s"] < opened + 30)]
    assert len(after) > 50 and after["fallback"].all()
    assert after["replica"].astype(str).str.startswith("small-").all()
    before = r[r["arrival_s"] <= opened]  # the fifth refusal opens the breaker at its own arrival
    assert (before["status"] == "failed").sum() >= 5 and not before["fallback"].any()
    s = res.summary
    assert s["requests"] == s["completed"] + s["failed"]
