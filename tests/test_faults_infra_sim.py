"""Node and deploy faults in the simulator (odhsim.sim.faults_infra): a failed node takes its replicas and GPUs
away and gives the GPUs back at repair; a start inside a deploy fault's window fails and the controller restarts it
with CrashLoopBackOff until a start after the window succeeds; nothing is lost; random faults are reproducible;
without faults nothing changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.rng import RngStreams
from odhsim.scenario.deployment import GpuPool
from odhsim.scenario.faults import FaultSpec, fault_windows
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.sim.controller import FIXED_MODEL_BYTES
from odhsim.sim.gpu_pool import SimGpuPool
from odhsim.sim.run import simulate
from policies.builtin import REGISTRY
from policies.lifecycle.start_faults import failed_start
from policies.lifecycle.states import RestartBackoff
from policies.lifecycle.storage import StartupModel, StartupParams

ROOT = Path(__file__).resolve().parents[1]
TEN_TOKENS = {"dist": "fixed", "value": 10}


def fixed_scenario(faults: list[dict[str, Any]], *, replicas: int, count: int, per_node: int, **extra: Any) -> dict:
    return {
        "name": "infra",
        "seed": 3,
        "duration_s": 400,
        "gpu_pool": [{"gpu": "A100-80GB", "count": count, "gpus_per_node": per_node}],
        "models": [
            {
                "name": "clf",
                "kind": "fixed",
                "gpu": "A100-80GB",
                "replicas": replicas,
                "concurrency": 4,
                "service_time": {"dist": "exponential", "mean_s": 0.5},
            }
        ],
        "workload": {
            "sources": [
                {
                    "kind": "poisson",
                    "rate": 20.0,
                    "duration_s": 400,
                    "prompt_tokens": TEN_TOKENS,
                    "output_tokens": TEN_TOKENS,
                }
            ]
        },
        "faults": faults,
        "outputs": {"timeseries_bucket_s": 10},
        **extra,
    }


def cold_start() -> tuple[float, float, float]:
    """Download, load and test seconds of the `clf` model's cold start (the scenario's default startup model)."""
    plan = StartupModel(StartupParams()).plan(FIXED_MODEL_BYTES, "pvc://models/clf", 1, cached=False)
    return plan.download_s, plan.load_s, plan.test_s


def history(replicas: pd.DataFrame, name: str) -> list[tuple[float, str]]:
    rows = replicas[(replicas["replica"] == name) & (replicas["state"] != "stopped")]
    return [(float(t), str(s)) for t, s in zip(rows["time_s"], rows["state"], strict=True)]


def fault_rows(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["kind"] == "fault"].reset_index(drop=True)


# -- node failure -------------------------------------------------------------------------------------------------
def test_node_failure_removes_its_replicas_and_gpus_and_returns_them_at_repair() -> None:
    # 6 one-GPU replicas on two 4-GPU nodes: 4 on node 0, 2 on node 1. Node 0 fails at 100 s for 200 s: its 4
    # replicas die, 2 restart on node 1's free GPUs at once, 2 wait pending until the repair at 300 s.
    fault = {"kind": "node_failure", "node": 0, "at_s": 100, "duration_s": 200}
    res = simulate(scenario_from_dict(fixed_scenario([fault], replicas=6, count=8, per_node=4)))
    d, load, test = cold_start()
    boot = d + load + test
    on_node0 = [f"clf-v1-{i}" for i in range(4)]
    for name in on_node0:
        h = history(res.replicas, name)
        assert h[:4] == [(0.0, "ready"), (100.0, "failed"), (100.0, "restarting"), (100.0, "pending")]
    moved, waited = on_node0[:2], on_node0[2:]
    for name in moved:  # placed on node 1 at once, cold (node 1 never had the model)
        h = history(res.replicas, name)
        assert h[4] == (100.0, "downloading")
        assert h[-1][1] == "ready" and h[-1][0] == pytest.approx(100.0 + boot)
    for name in waited:  # pending until the node is back; its cache was lost, so the start there is cold
        h = history(res.replicas, name)
        assert [s for _, s in h[4:]] == ["downloading", "loading", "testing", "ready"]
        assert h[4][0] == 300.0 and h[-1][0] == pytest.approx(300.0 + boot)
    for name in ("clf-v1-4", "clf-v1-5"):  # node 1's replicas never noticed
        assert history(res.replicas, name) == [(0.0, "ready")]
    ts = res.timeseries.set_index("time_s")
    assert (ts.loc[10.0 : 100.0 - 1e-9, "gpus"] == 6).all()
    assert (ts.loc[110.0:290.0, "gpus"] == 4).all() and (ts.loc[110.0:290.0, "ready_replicas"] == 4).all()
    assert (ts.loc[310.0:, "gpus"] == 6).all() and (ts.loc[310.0:, "ready_replicas"] == 6).all()
    f = fault_rows(res.events)
    assert list(f["time_s"]) == [100.0, 300.0]
    assert "4 A100-80GB GPU(s) leave the pool, 4 in service; 4 replica(s) on it lost" in f["detail"][0]
    assert f["detail"][0].startswith("node_failure-0: node_failure on a100-80gb-node-0: start")
    assert (
        f["detail"][1]
        == "node_failure-0: node_failure on a100-80gb-node-0: end (repaired, 8 A100-80GB GPU(s) in service)"
    )
    starts = res.events[(res.events["kind"] == "start") & (res.events["time_s"] == 300.0)]
    assert len(starts) == 2 and starts["detail"].str.startswith("cold start on a100-80gb-node-0").all()


def test_failed_node_gpus_leave_the_pool_and_queued_requests_are_placed_at_repair() -> None:
    pool = SimGpuPool(
        [GpuPool(gpu="A100-80GB", count=8, gpus_per_node=4)],
        REGISTRY.build("placement", "first-fit-decreasing", {}, np.random.default_rng(0)),  # type: ignore[arg-type]
    )
    node0 = pool.nodes[0]
    node0.cache.add(0.0, "m", 1.0)
    pool.fail_node(node0)
    assert pool.gpus_in_service("A100-80GB") == 4 and pool.free_gpus("A100-80GB") == 4
    assert not node0.cache.has("m")  # lost with the node
    granted: list[Any] = []
    assert pool.request("A100-80GB", 4, granted.append)  # node 1 fits it
    assert granted[0].node is pool.nodes[1]
    assert not pool.request("A100-80GB", 1, granted.append)  # node 0's free GPUs are not offered
    pool.repair_node(node0)
    assert len(granted) == 2 and granted[1].node is node0
    assert pool.gpus_in_service("A100-80GB") == 8


def test_nothing_is_lost_under_node_failure_and_each_retry_goes_to_a_live_replica() -> None:
    faults = [{"kind": "node_failure", "node": 0, "at_s": 100, "duration_s": 200}]
    sc = fixed_scenario(faults, replicas=6, count=8, per_node=4)
    no_retry = simulate(scenario_from_dict(sc)).requests
    ample = {"retry": {"type": "ladder", "params": {"budget_percent": 100, "min_retry_concurrency": 100}}}
    retried = simulate(scenario_from_dict({**sc, "gateway": {"resilience": ample}})).requests
    without = simulate(scenario_from_dict({**sc, "faults": []})).requests
    for r in (no_retry, retried):  # every arrival is one row, answered once
        assert len(r) == len(without) > 7000 and r["request_id"].is_unique
        assert set(r["request_id"]) == set(without["request_id"])
        assert r["finish_s"].notna().all()
        assert set(r["status"].astype(str)) <= {"ok", "failed", "shed", "timeout"}
    # without retries, exactly the requests node 0's replicas held fail, each naming the fault
    lost = no_retry[no_retry["status"] != "ok"]
    assert len(lost) > 0 and (lost["arrival_s"] <= 100).all() and (lost["finish_s"] == 100).all()
    assert lost["replica"].isin([f"clf-v1-{i}" for i in range(4)]).all()
    assert lost["reason"].astype(str).str.contains("node_failure-0: node a100-80gb-node-0 failed").all()
    # with an ample retry budget each of them is retried once, on a replica that lives (none of node 0's, which
    # all leave the route before any request fails), and answered ok
    assert (retried["status"] == "ok").all()
    again = retried[retried["attempts"] > 1]
    assert sorted(again["request_id"]) == sorted(lost["request_id"]) and (again["attempts"] == 2).all()
    assert again["replica"].isin(["clf-v1-4", "clf-v1-5"]).all()


# -- deploy faults ------------------------------------------------------------------------------------------------
def expected_states(kind: str) -> list[tuple[str, float]]:
    """The rescheduled replica's records from 10 s (its node fails; it restarts on the other node, cold) with the
    deploy fault holding over [0, 28): two failed attempts, back-offs of 10 s and 20 s, then a start that works."""
    d, load, test = cold_start()
    b1, b2 = RestartBackoff().next_delay(1), RestartBackoff().next_delay(2)
    assert (b1, b2) == (10.0, 20.0)
    t0 = 10.0
    if kind == "download_failure":  # fails halfway through the download, restarts cold (downloads again)
        f1 = t0 + d / 2
        r1 = f1 + b1
        f2 = r1 + d / 2
        r2 = f2 + b2
        tail = [("downloading", r2), ("loading", r2 + d), ("testing", r2 + d + load), ("ready", r2 + d + load + test)]
        return [("downloading", t0), ("failed", f1), ("restarting", f1), ("downloading", r1), ("failed", f2),
                ("restarting", f2), *tail]  # fmt: skip
    if kind == "download_timeout":  # stalls until timeout_s (5 s), restarts cold
        f1, r1, f2, r2 = t0 + 5, t0 + 5 + b1, t0 + 10 + b1, t0 + 10 + b1 + b2
        tail = [("downloading", r2), ("loading", r2 + d), ("testing", r2 + d + load), ("ready", r2 + d + load + test)]
        return [("downloading", t0), ("failed", f1), ("restarting", f1), ("downloading", r1), ("failed", f2),
                ("restarting", f2), *tail]  # fmt: skip
    if kind == "readiness_failure":  # the test fails at its end; the restart is warm (load + test)
        f1 = t0 + d + load + test
        r1 = f1 + b1
        f2 = r1 + load + test
        r2 = f2 + b2
        return [("downloading", t0), ("loading", t0 + d), ("testing", t0 + d + load), ("failed", f1),
                ("restarting", f1), ("loading", r1), ("testing", r1 + load), ("failed", f2), ("restarting", f2),
                ("loading", r2), ("testing", r2 + load), ("ready", r2 + load + test)]  # fmt: skip
    assert kind == "load_oom"  # out of memory at the end of the load; the restart is warm
    f1 = t0 + d + load
    r1 = f1 + b1
    f2 = r1 + load
    r2 = f2 + b2
    return [("downloading", t0), ("loading", t0 + d), ("failed", f1), ("restarting", f1), ("loading", r1),
            ("failed", f2), ("restarting", f2), ("loading", r2), ("testing", r2 + load),
            ("ready", r2 + load + test)]  # fmt: skip


@pytest.mark.parametrize("kind", ["download_failure", "download_timeout", "readiness_failure", "load_oom"])
def test_deploy_fault_makes_the_start_take_exactly_back_off_plus_retry_time(kind: str) -> None:
    deploy: dict[str, Any] = {"kind": kind, "model": "clf", "at_s": 0, "duration_s": 28}
    if kind == "download_timeout":
        deploy["timeout_s"] = 5
    faults = [{"kind": "node_failure", "node": 0, "at_s": 10}, deploy]  # the node never returns: a start at 10 s
    sc = fixed_scenario(faults, replicas=1, count=2, per_node=1)
    sc["duration_s"] = sc["workload"]["sources"][0]["duration_s"] = 100
    sc["workload"]["sources"][0]["rate"] = 2.0
    res = simulate(scenario_from_dict(sc))
    h = history(res.replicas, "clf-v1-0")
    assert h[:4] == [(0.0, "ready"), (10.0, "failed"), (10.0, "restarting"), (10.0, "pending")]
    want = expected_states(kind)
    assert [s for _, s in h[4:]] == [s for s, _ in want]
    assert [t for t, _ in h[4:]] == pytest.approx([t for _, t in want], abs=1e-9)
    ev = res.events
    failed = ev[(ev["kind"] == "fault") & (ev["replica"] == "clf-v1-0")]
    assert len(failed) == 2 and failed["detail"].str.startswith(f"{kind}-1: {kind} on clf-v1-0: ").all()
    window = fault_rows(ev)[lambda f: (f["model"] == "clf") & (f["replica"] == "")]
    assert list(window["time_s"]) == [0.0, 28.0]
    restarts = ev[(ev["kind"] == "restart") & (ev["replica"] == "clf-v1-0")]
    assert len(restarts) == 3  # rescheduled off the failed node, then two CrashLoopBackOff restarts
    assert restarts["detail"].iloc[-1].startswith("restart 2")
    s = res.summary
    assert s["requests"] == len(res.requests) and res.requests["finish_s"].notna().all()


@pytest.mark.parametrize("kind", ["download_failure", "readiness_failure"])
def test_a_download_fault_spares_a_warm_start_and_a_readiness_fault_does_not(kind: str) -> None:
    # two 2-GPU nodes, 3 replicas: node 0 holds two, node 1 one (its cache has the model) and a free GPU. Node 0
    # fails for good at 10 s: one replica restarts on node 1 warm (no download), the other waits pending.
    faults = [{"kind": "node_failure", "node": 0, "at_s": 10}, {"kind": kind, "model": "clf", "at_s": 0}]
    sc = fixed_scenario(faults, replicas=3, count=4, per_node=2)
    sc["gpu_pool"][0]["model_cache_gb"] = 100  # nodes keep the weights of the replicas they ran
    sc["duration_s"] = sc["workload"]["sources"][0]["duration_s"] = 60
    res = simulate(scenario_from_dict(sc))
    _, load, test = cold_start()
    h = history(res.replicas, "clf-v1-0")
    assert h[4] == (10.0, "loading")  # warm: the weights are in node 1's cache
    if kind == "download_failure":
        assert h[5:] == [(pytest.approx(10.0 + load), "testing"), (pytest.approx(10.0 + load + test), "ready")]
    else:
        assert [s for _, s in h[5:8]] == ["testing", "failed", "restarting"]
        assert all(s != "ready" for _, s in h[4:])
    assert [s for _, s in history(res.replicas, "clf-v1-1")][-1] == "pending"  # no GPU anywhere until a repair


# -- reproducibility and the no-fault path ----------------------------------------------------------------------
def random_node_failures(seed: int) -> pd.DataFrame:
    fault = {"kind": "node_failure", "time_to_failure": {"dist": "weibull", "mean_s": 80, "shape": 1.5},
             "repair_time": {"dist": "exponential", "mean_s": 20}}  # fmt: skip
    sc = fixed_scenario([fault], replicas=6, count=8, per_node=4)
    return simulate(scenario_from_dict(sc), seed=seed)


def test_a_random_node_failure_is_bit_identical_for_a_seed_and_differs_for_another() -> None:
    a, b, c = random_node_failures(5), random_node_failures(5), random_node_failures(6)
    fa, fc = fault_rows(a.events), fault_rows(c.events)
    assert len(fa) >= 4  # a few fail / repair cycles in 400 s
    pd.testing.assert_frame_equal(fa, fault_rows(b.events))
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.replicas, b.replicas)
    assert list(fa["time_s"]) != list(fc["time_s"])
    # the times are the one schedule both engines read: fault_windows on the fault's own stream
    spec = FaultSpec.model_validate({"kind": "node_failure", "time_to_failure": {"dist": "weibull", "mean_s": 80,
                                     "shape": 1.5}, "repair_time": {"dist": "exponential", "mean_s": 20}})  # fmt: skip
    windows = fault_windows(spec, RngStreams(5).get("faults/0"))
    want = []
    for start, end in windows:
        if start >= 400:
            break
        want += [start, end]
    got = list(fa["time_s"])
    assert got == want[: len(got)] and len(got) >= len(want) - 1  # a repair after the run's end is not reached


FINGERPRINT_COLUMNS = ["request_id", "model", "arrival_s", "start_s", "first_token_s", "finish_s", "status",
                       "reason", "replica", "retries", "fallback", "cached_tokens"]  # fmt: skip
DEFAULT_FINGERPRINT = "d07eb4f2bbec496b8be14ce31daea66f8db17cbc81b3c8ab4342851268734f40"
"""sha256 of scenarios/default.yaml's requests (FINGERPRINT_COLUMNS as CSV) on the code before faults existed."""


def test_the_no_fault_path_is_unchanged() -> None:
    res = simulate(load_scenario(ROOT / "scenarios" / "default.yaml"))
    csv = res.requests[FINGERPRINT_COLUMNS].to_csv(index=False).encode()
    assert hashlib.sha256(csv).hexdigest() == DEFAULT_FINGERPRINT
    assert not (res.events["kind"] == "fault").any()


def test_failed_start_phases_per_kind_and_download_faults_spare_warm_plans() -> None:
    cold = StartupModel().plan(2e9, "s3://b/m", 1, cached=False)
    warm = StartupModel().plan(2e9, "s3://b/m", 1, cached=True)
    assert failed_start(cold, "download_failure").phases == (("downloading", cold.download_s / 2),)
    assert failed_start(cold, "download_timeout", 42.0).phases == (("downloading", 42.0),)
    assert failed_start(cold, "download_timeout", 42.0).redownload
    oom = failed_start(warm, "load_oom")
    assert oom.phases == (("loading", warm.load_s),) and not oom.redownload
    ready = failed_start(cold, "readiness_failure")
    assert ready.total_s == pytest.approx(cold.total_s) and ready.phases[-1] == ("testing", cold.test_s)
    assert failed_start(warm, "download_failure") is None and failed_start(warm, "download_timeout") is None
    with pytest.raises(ValueError, match="unknown deploy fault kind 'node_failure'"):
        failed_start(cold, "node_failure")
