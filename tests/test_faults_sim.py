"""Faults in the simulator (odhsim.sim.faults): every kind injected, every request still answered exactly once, and
the gateway core's reactions (retries, the ladder's fallback and alert, outlier ejection, restarts) where and when
their configuration says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim import catalog
from odhsim.results.run_result import RunResult
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.sim.faults import CONNECT_TIMEOUT_S, ERROR_ANSWER_S
from odhsim.sim.run import simulate
from policies.lifecycle.storage import StartupModel

REPO = Path(__file__).resolve().parents[1]
FINAL = {"ok", "shed", "failed", "timeout"}
LADDER = {"type": "ladder", "params": {"retry_same_after": 1, "fallback_after": 2, "open_breaker_after": 5,
                                       "budget_percent": 100, "min_retry_concurrency": 100}}  # fmt: skip


def scenario(
    faults: list[dict[str, Any]],
    *,
    replicas: int = 3,
    rate: float = 4.0,
    duration_s: float = 60.0,
    resilience: dict[str, Any] | None = None,
    backup: bool = False,
    router: str = "round-robin",
    seed: int = 3,
    output_median: int = 60,
    max_num_seqs: int = 256,
) -> dict[str, Any]:
    """A chat model of `replicas` llama3.2-1b replicas (and a one-replica `backup` as its fallback) under Poisson
    traffic, with `faults`; `output_median` tokens keep a replica busy longer (about 5 ms each), a small
    `max_num_seqs` makes requests queue in the replicas."""
    engine = {"max_num_seqs": max_num_seqs}
    chat: dict[str, Any] = {
        "name": "chat", "profile": "llama3.2-1b", "gpu": "A100-80GB", "replicas": replicas, "engine": engine
    }  # fmt: skip
    models = [chat]
    if backup:
        chat["fallback"] = "backup"
        models.append({"name": "backup", "profile": "llama3.2-1b", "gpu": "A100-80GB", "replicas": 1})
    gateway: dict[str, Any] = {"router": {"profile": router}}
    if resilience is not None:
        gateway["resilience"] = resilience
    return {
        "name": "faults-test",
        "seed": seed,
        "duration_s": duration_s,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 8, "gpus_per_node": 8}],
        "models": models,
        "gateway": gateway,
        "faults": faults,
        "workload": {
            "sources": [
                {
                    "kind": "poisson",
                    "rate": rate,
                    "duration_s": duration_s,
                    "prompt_tokens": {"dist": "lognormal", "median": 400, "sigma": 0.5, "max": 2000},
                    "output_tokens": {"dist": "lognormal", "median": output_median, "sigma": 0.5, "max": 2000},
                }
            ],
            "models": {"chat": 1.0},
        },
        "outputs": {"timeseries_bucket_s": 5.0},
    }


def run(doc: dict[str, Any]) -> RunResult:
    return simulate(scenario_from_dict(doc, base_dir=REPO))


def assert_conserved(res: RunResult, labels: list[str]) -> None:
    """Every arrival ends exactly once (ok, shed, failed or timeout: none left unfinished in a run without a hard
    stop), the summary counts them all, and every failed request's reason names one of the faults."""
    r, s = res.requests, res.summary
    assert set(r["status"].astype(str)) <= FINAL
    assert s["requests"] == len(r) == s["completed"] + s["shed"] + s["failed"] + s["timeout"]
    assert s["in_flight_at_stop"] == 0
    failed = r.loc[r["status"] == "failed", "reason"].astype(str)
    assert all(any(label in reason for label in labels) for reason in failed), failed.tolist()
    assert s["availability"] == pytest.approx(s["completed"] / s["requests"])


def fault_rows(res: RunResult, label: str) -> pd.DataFrame:
    ev = res.events
    return ev[(ev["kind"] == "fault") & ev["detail"].astype(str).str.startswith(f"{label}:")]


def window_of(res: RunResult, label: str) -> tuple[float, float]:
    rows = fault_rows(res, label)
    start = rows.loc[rows["detail"].str.contains(": start"), "time_s"]
    end = rows.loc[rows["detail"].str.endswith(": end"), "time_s"]
    assert len(start) == 1 and len(end) == 1, rows
    return float(start.iloc[0]), float(end.iloc[0])


# -- each kind: injected, recorded, nothing lost ---------------------------------------------------------------------
def test_a_crash_resets_what_the_replica_held_and_the_ladder_retries_it_elsewhere() -> None:
    # Requests still waiting for their first token are retried on another replica; a stream already under way
    # cannot be (Envoy retries only before the response starts): it fails, naming the fault.
    fault = {"kind": "replica_crash", "name": "boom", "model": "chat", "replica": 0, "at_s": 20.0}
    res = run(scenario([fault], resilience={"retry": LADDER}, output_median=600, rate=8.0, max_num_seqs=4))
    assert_conserved(res, ["boom"])
    r, ev = res.requests, res.events
    crash = ev[ev["kind"] == "crash"]
    assert crash["time_s"].tolist() == [20.0] and crash["replica"].tolist() == ["chat-v1-0"]
    retries = ev[ev["kind"] == "retry"]
    assert (
        len(retries) > 0
        and retries["detail"].str.startswith("replica chat-v1-0 failed (reset: replica failed: fault boom").all()
    )
    retried = r[r["attempts"] == 2]
    assert len(retried) == len(retries)  # each reset request tried a second replica, and got its answer there
    assert set(retried["status"].astype(str)) == {"ok"} and "chat-v1-0" not in set(retried["replica"].astype(str))
    assert (retried["first_token_s"] > 20.0).all()
    cut = r[r["status"] == "failed"]
    assert len(cut) > 0 and (cut["finish_s"] == 20.0).all() and (cut["first_token_s"] < 20.0).all()
    assert cut["reason"].str.endswith("(mid-stream: not retried)").all() and (cut["attempts"] == 1).all()
    assert (r["attempts"] >= 1).all()
    assert res.summary["retry_amplification"] == pytest.approx(1 + len(retried) / len(r))


def test_without_a_retry_policy_a_crash_fails_what_the_replica_held_naming_the_fault() -> None:
    fault = {"kind": "replica_crash", "name": "boom", "model": "chat", "replica": 0, "at_s": 20.0}
    res = run(scenario([fault], output_median=600))
    assert_conserved(res, ["boom"])
    failed = res.requests[res.requests["status"] == "failed"]
    assert len(failed) > 0 and (failed["attempts"] == 1).all()
    assert (failed["finish_s"] == 20.0).all()


def test_error_rate_answers_a_share_with_503_at_once_and_each_is_retried() -> None:
    fault = {"kind": "error_rate", "name": "bad-gpu", "model": "chat", "replica": 1, "share": 0.5,
             "at_s": 10.0, "duration_s": 30.0}  # fmt: skip
    res = run(scenario([fault], resilience={"retry": LADDER}))
    assert_conserved(res, ["bad-gpu"])
    start, end = window_of(res, "bad-gpu")
    assert (start, end) == (10.0, 40.0)
    retries = res.events[res.events["kind"] == "retry"]
    assert len(retries) > 5
    what = "replica chat-v1-1 failed (gateway-error: fault bad-gpu: replica answered 503)"
    assert (retries["detail"].str.startswith(what)).all()
    assert retries["time_s"].between(start, end + ERROR_ANSWER_S).all()
    r = res.requests
    # about half of the attempts sent to the bad replica in the window failed: attempts 2 on ~1/2 of its third
    in_window = r[r["arrival_s"].between(start, end - 1.0)]
    share = (in_window["attempts"] == 2).sum() / (len(in_window) / 3)
    assert 0.3 < share < 0.7
    assert (r.loc[r["attempts"] == 2, "replica"].astype(str) != "chat-v1-1").all()


def test_a_slow_replica_takes_factor_times_longer_only_in_its_window() -> None:
    fault = {"kind": "slow_replica", "name": "hot", "model": "chat", "replica": 0, "factor": 5.0,
             "at_s": 20.0, "duration_s": 20.0}  # fmt: skip
    base = run(scenario([]))
    res = run(scenario([fault]))
    assert_conserved(res, ["hot"])
    assert window_of(res, "hot") == (20.0, 40.0)
    assert res.summary["failed"] == 0

    def e2e(result: RunResult, lo: float, hi: float, replica: str) -> float:
        r = result.requests
        mine = r[(r["replica"].astype(str) == replica) & r["arrival_s"].between(lo, hi)]
        return float((mine["finish_s"] - mine["arrival_s"]).mean())

    assert e2e(res, 22.0, 35.0, "chat-v1-0") > 3.0 * e2e(base, 22.0, 35.0, "chat-v1-0")
    assert e2e(res, 22.0, 35.0, "chat-v1-1") == pytest.approx(e2e(base, 22.0, 35.0, "chat-v1-1"), rel=0.2)
    before = res.requests["arrival_s"] < 19.0
    pd.testing.assert_frame_equal(res.requests[before], base.requests[before])  # nothing changed before it


def test_a_slow_fixed_replica_serves_what_starts_in_its_window_factor_times_slower() -> None:
    doc = scenario([{"kind": "slow_replica", "name": "hot", "model": "chat", "replica": 0, "factor": 3.0,
                     "at_s": 10.0, "duration_s": 10.0}])  # fmt: skip
    doc["gpu_pool"] = [{"gpu": "T4", "count": 2}]
    doc["models"] = [{"name": "chat", "kind": "fixed", "gpu": "T4", "replicas": 2, "concurrency": 64,
                      "service_time": {"dist": "deterministic", "mean_s": 0.1}}]  # fmt: skip
    res = run(doc)
    assert_conserved(res, ["hot"])
    r = res.requests
    took = (r["finish_s"] - r["start_s"]).round(9)
    slow = (r["replica"].astype(str) == "chat-v1-0") & r["start_s"].between(10.0, 20.0, inclusive="left")
    assert slow.sum() > 10 and (took[slow] == 0.3).all() and (took[~slow] == 0.1).all()


def test_network_latency_delays_each_way_of_each_attempt() -> None:
    fault = {"kind": "network", "name": "wan", "model": "chat", "replica": 0, "latency_s": 0.4,
             "at_s": 10.0, "duration_s": 30.0}  # fmt: skip
    base = run(scenario([]))
    res = run(scenario([fault]))
    assert_conserved(res, ["wan"])
    r, b = res.requests, base.requests
    mine = (r["replica"].astype(str) == "chat-v1-0") & r["arrival_s"].between(12.0, 30.0)
    ttft = (r["first_token_s"] - r["arrival_s"])[mine]
    assert len(ttft) > 10 and (ttft >= 0.8).all()  # 0.4 s there and 0.4 s back before the first token is seen
    others = (r["replica"].astype(str) == "chat-v1-1") & r["arrival_s"].between(12.0, 30.0)
    assert ((r["first_token_s"] - r["arrival_s"])[others] < 0.8).all()
    assert (b.loc[mine, "first_token_s"] - b.loc[mine, "arrival_s"]).max() < 0.8


def test_a_partition_fails_connections_after_the_connect_timeout_and_they_are_retried() -> None:
    fault = {"kind": "network", "name": "cut", "model": "chat", "replica": 0, "partition": True,
             "at_s": 10.0, "duration_s": 20.0}  # fmt: skip
    retry = {"type": "envoy-budget", "params": {"retry_on": ["connect-failure", "reset"], "budget_percent": 100}}
    res = run(scenario([fault], resilience={"retry": retry}, output_median=300, rate=8.0, max_num_seqs=2))
    assert_conserved(res, ["cut"])
    r, ev = res.requests, res.events
    retries = ev[ev["kind"] == "retry"]
    refused = retries["detail"].str.contains("connect-failure: fault cut: network partition, no connection within 5 s")
    lost = retries["detail"].str.contains("reset: fault cut: network partition, the answer was lost")
    assert (refused | lost).all() and refused.sum() > 5 and lost.sum() > 0
    retried = r[r["attempts"] == 2]
    assert len(retried) == len(retries) and (retried["status"] == "ok").all()
    # a new connection waits the connect timeout before it fails, so its retry's first token comes after it
    late = r["request_id"].isin(retried["request_id"]) & (r["arrival_s"] > 10.0 + 1.0)
    assert late.sum() > 5 and ((r.loc[late, "first_token_s"] - r.loc[late, "arrival_s"]) >= CONNECT_TIMEOUT_S).all()
    # a stream under way when the partition began fails, naming it; nothing else fails
    failed = r[r["status"] == "failed"]
    assert failed["reason"].str.endswith("the answer was lost (mid-stream: not retried)").all()
    assert (failed["first_token_s"] < 10.0).all()


def test_stale_metrics_freeze_what_the_router_sees() -> None:
    # llm-d's default scorers read the scraped queue and KV usage: frozen, they keep preferring the replica that
    # looked emptiest when the scrapes stopped, so it takes most of the traffic until they resume.
    fault = {"kind": "stale_metrics", "name": "blind", "model": "chat", "at_s": 20.0, "duration_s": 20.0}
    kw: dict[str, Any] = {"router": "llm-d-default", "rate": 8.0}
    base, res = run(scenario([], **kw)), run(scenario([fault], **kw))
    assert_conserved(res, ["blind"])
    assert window_of(res, "blind") == (20.0, 40.0)

    def busiest_share(result: RunResult, lo: float, hi: float) -> float:
        r = result.requests
        counts = r.loc[r["arrival_s"].between(lo, hi), "replica"].astype(str).value_counts()
        return float(counts.iloc[0] / counts.sum())

    assert busiest_share(res, 21.0, 39.0) > 0.9
    assert busiest_share(base, 21.0, 39.0) < 0.6
    assert busiest_share(res, 45.0, 60.0) < 0.6  # scrapes resumed


def write_repeats(path: Path) -> Path:
    # one prompt asked every 10 s by Mooncake-format rows; a one-entry local tier forgets it whenever another
    # prompt is answered in between, so each repeat is served by the shared tier unless the tier is down
    rows = []
    for i in range(8):
        rows.append({"timestamp": i * 10_000, "input_length": 1000, "output_length": 20, "hash_ids": [1, 2]})
        rows.append({"timestamp": i * 10_000 + 5_000, "input_length": 300, "output_length": 10, "hash_ids": [10 + i]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "windows",
    [[(25.0, 30.0)], [(25.0, 15.0), (35.0, 20.0)]],  # one outage, or two overlapping ones covering the same time
    ids=["one", "overlapping"],
)
def test_a_shared_cache_tier_down_turns_its_hits_into_counted_misses(
    tmp_path: Path, windows: list[tuple[float, float]]
) -> None:
    trace = write_repeats(tmp_path / "trace.jsonl")

    def doc(faults: list[dict[str, Any]]) -> dict[str, Any]:
        d = scenario(faults, replicas=1)
        d["workload"] = {"sources": [{"kind": "trace", "path": str(trace)}]}
        d.pop("duration_s")
        d["gateway"]["response_cache"] = {"type": "tiered", "params": {"local_max_entries": 1, "shared": True}}
        return d

    faults = [{"kind": "cache_down", "name": f"redis-{i}", "at_s": at, "duration_s": d} for i, (at, d) in
              enumerate(windows)]  # fmt: skip
    base = simulate(scenario_from_dict(doc([]), base_dir=tmp_path))
    res = simulate(scenario_from_dict(doc(faults), base_dir=tmp_path))
    assert_conserved(res, ["redis"])
    r, b = res.requests, base.requests
    repeats = r["prompt_tokens"] == 1000
    assert b.loc[repeats, "cache_hit"].tolist() == [False] + [True] * 7
    down = repeats & r["arrival_s"].between(25.0, 55.0)
    assert r.loc[down, "cache_hit"].tolist() == [False, False, False]  # 30, 40, 50 s: the tier is unreachable
    assert r.loc[repeats & ~down, "cache_hit"].tolist() == [False, True, True, True, True]  # 60 s: stored again at 30
    assert res.summary["response_cache"]["shared_errors"] > 0 and base.summary["response_cache"]["shared_errors"] == 0
    assert (r.loc[r["cache_hit"], "attempts"] == 0).all() and (r.loc[~r["cache_hit"], "attempts"] == 1).all()


# -- the ladder, the outlier detector and restarts: where their configuration says --------------------------------
def test_the_ladder_sends_the_second_failure_to_the_fallback() -> None:
    faults = [{"kind": "error_rate", "name": f"down-{k}", "model": "chat", "replica": k, "share": 1.0, "at_s": 0.0}
              for k in range(2)]  # fmt: skip
    res = run(scenario(faults, replicas=2, backup=True, resilience={"retry": LADDER}, rate=1.0, duration_s=30.0))
    assert_conserved(res, ["down-0", "down-1"])
    r, ev = res.requests, res.events
    assert (r["status"] == "ok").all() and r["fallback"].all()
    assert (r["attempts"] == 3).all()  # chat, chat again (the first failure's retry), then the backup
    assert (r["replica"].astype(str) == "backup-v1-0").all()
    assert (ev["kind"] == "retry").sum() == len(r) and (ev["kind"] == "fallback").sum() == len(r)
    assert ev.loc[ev["kind"] == "fallback", "detail"].str.endswith("2 failures: try the backup model").all()
    assert not (ev["kind"] == "alert").any()
    assert res.summary["retry_amplification"] == 3.0


def test_the_fifth_failure_gives_up_and_raises_the_alert() -> None:
    faults = [{"kind": "error_rate", "name": f"down-{k}", "model": "chat", "replica": k, "share": 1.0, "at_s": 0.0}
              for k in range(2)]  # fmt: skip
    faults.append({"kind": "error_rate", "name": "backup-down", "model": "backup", "replica": 0, "share": 1.0,
                   "at_s": 0.0})  # fmt: skip
    res = run(scenario(faults, replicas=2, backup=True, resilience={"retry": LADDER}, rate=1.0, duration_s=30.0))
    assert_conserved(res, ["down-0", "down-1", "backup-down"])
    r, ev = res.requests, res.events
    assert (r["status"] == "failed").all() and (r["attempts"] == 5).all()
    assert r["reason"].astype(str).str.endswith("5 failures: give up and open the breaker").all()
    alerts = ev[ev["kind"] == "alert"]
    assert len(alerts) == len(r)
    assert alerts["time_s"].tolist() == sorted(r["finish_s"].tolist())  # raised as each request gives up
    assert (ev["kind"] == "fallback").sum() == len(r)  # the second failure still went to the backup
    assert res.summary["availability"] == 0.0


def test_outlier_detection_ejects_a_half_failing_replica_within_an_interval_and_returns_it() -> None:
    interval, ejection = 5.0, 10.0
    outlier = {"type": "envoy", "params": {
        "interval_s": interval, "base_ejection_time_s": ejection, "consecutive_5xx": 1000,
        "enforce_failure_percentage": True, "failure_percentage_threshold": 30, "failure_percentage_minimum_hosts": 1,
        "failure_percentage_request_volume": 5, "max_ejection_percent": 50}}  # fmt: skip
    fault = {"kind": "error_rate", "name": "flaky", "model": "chat", "replica": 1, "share": 0.5, "at_s": 10.0,
             "duration_s": 50.0}  # fmt: skip
    res = run(scenario([fault], replicas=4, rate=8.0, resilience={"retry": LADDER, "outlier_detection": outlier}))
    assert_conserved(res, ["flaky"])
    ev, r = res.events, res.requests
    ejected = ev[(ev["kind"] == "ejection") & (ev["replica"] == "chat-v1-1")]
    returned = ev[(ev["kind"] == "ejection_end") & (ev["replica"] == "chat-v1-1")]
    assert set(ev.loc[ev["kind"] == "ejection", "replica"]) == {"chat-v1-1"}
    first = float(ejected["time_s"].iloc[0])
    assert 10.0 < first <= 10.0 + interval  # the sweep that closes the fault's first interval
    assert ejected["detail"].iloc[0] == "failure_percentage"
    back = float(returned["time_s"].iloc[0])
    assert back == pytest.approx(first + ejection)  # returned at the first sweep its ejection time allows
    while_out = r["arrival_s"].between(first + 0.01, back - 0.01)
    assert while_out.sum() > 20 and not (r.loc[while_out, "replica"].astype(str) == "chat-v1-1").any()


def test_a_crashed_replica_is_back_after_its_backoff_and_readiness_test() -> None:
    fault = {"kind": "replica_crash", "name": "boom", "model": "chat", "replica": 0, "at_s": 20.0}
    doc = scenario([fault], resilience={"retry": LADDER}, duration_s=90.0)
    sc = scenario_from_dict(doc, base_dir=REPO)
    res = simulate(sc)
    states = res.replicas[res.replicas["replica"] == "chat-v1-0"]
    after = states[states["time_s"] >= 20.0]
    assert after["state"].tolist()[:5] == ["failed", "restarting", "loading", "testing", "ready"]
    times = dict(zip(after["state"].iloc[:5], after["time_s"].iloc[:5], strict=True))
    weights = catalog.model("llama3.2-1b").weight_bytes
    plan = StartupModel(sc.startup).plan(weights, "pvc://models/llama3.2-1b", 1, cached=True)  # the node has it
    assert times["loading"] == 20.0 + 10.0  # CrashLoopBackOff's first back-off: 10 s
    assert times["testing"] == pytest.approx(times["loading"] + plan.load_s, abs=1e-9)
    assert times["ready"] == pytest.approx(times["testing"] + plan.test_s, abs=1e-9)
    restart = res.events[res.events["kind"] == "restart"]
    assert restart["time_s"].tolist() == [30.0] and "warm start" in restart["detail"].iloc[0]
    r = res.requests
    served_after = r[(r["replica"].astype(str) == "chat-v1-0") & (r["arrival_s"] > times["ready"])]
    assert len(served_after) > 10 and (served_after["status"] == "ok").all()
    none_while_down = r[(r["replica"].astype(str) == "chat-v1-0") & r["arrival_s"].between(20.01, times["ready"])]
    assert none_while_down.empty


def test_requests_wait_for_a_crashed_only_replica_and_are_served_when_it_is_back() -> None:
    # A model whose one replica is restarting has a replica coming: arrivals wait for it (the core's activator
    # hold) instead of failing as a model with no replicas would.
    fault = {"kind": "replica_crash", "name": "boom", "model": "chat", "replica": 0, "at_s": 20.0}
    res = run(scenario([fault], replicas=1, resilience={"retry": LADDER}, output_median=300))
    assert_conserved(res, ["boom"])
    r = res.requests
    ready = res.replicas[(res.replicas["time_s"] > 20.0) & (res.replicas["state"] == "ready")]["time_s"].iloc[0]
    waited = r[r["arrival_s"].between(20.0, ready)]
    assert len(waited) > 20 and (waited["status"] == "ok").all() and (waited["first_token_s"] >= ready).all()
    failed = r[r["status"] == "failed"]
    assert (failed["arrival_s"] < 20.0).all() and failed["reason"].str.endswith("(mid-stream: not retried)").all()


# -- reproducibility and the cost of the hooks -----------------------------------------------------------------------
def test_the_same_seed_gives_bit_identical_results_under_faults() -> None:
    sc = load_scenario(REPO / "scenarios" / "faults.yaml")
    a, b = simulate(sc), simulate(sc)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.replicas, b.replicas)
    c = simulate(sc, seed=sc.seed + 1)
    assert not c.requests["arrival_s"].equals(a.requests["arrival_s"])


def fingerprint(requests: pd.DataFrame) -> str:
    """sha256 of the requests table as CSV, without the `attempts` column this change added."""
    return hashlib.sha256(requests.drop(columns=["attempts"]).to_csv().encode()).hexdigest()


DEFAULT_REQUESTS_SHA256 = "761e99b176015879"
"""The first 16 hex digits of `fingerprint` for scenarios/default.yaml, taken before the faults were added: the
hooks cost nothing when no fault is declared. A change meant to alter the simulator's results updates it."""


def test_without_faults_results_are_those_from_before_the_faults() -> None:
    res = simulate(load_scenario(REPO / "scenarios" / "default.yaml"))
    assert fingerprint(res.requests)[:16] == DEFAULT_REQUESTS_SHA256
    assert (res.requests["attempts"] == 1).all()  # no cache, no shedding: every request tried exactly one replica
    assert res.summary["retry_amplification"] == 1.0
    kinds = set(res.events["kind"])
    assert not kinds & {"fault", "retry", "fallback", "alert", "ejection", "ejection_end", "restart"}


def test_a_fault_that_never_starts_changes_nothing_but_is_harmless() -> None:
    late = {"kind": "error_rate", "name": "late", "model": "chat", "share": 1.0, "at_s": 10_000.0}
    base, res = run(scenario([])), run(scenario([late]))
    pd.testing.assert_frame_equal(base.requests, res.requests)
    assert fault_rows(res, "late").empty


def test_a_fault_with_no_replica_to_hit_is_recorded_as_skipped() -> None:
    fault = {"kind": "slow_replica", "name": "nobody", "model": "chat", "replica": 7, "factor": 2.0, "at_s": 5.0,
             "duration_s": 5.0}  # fmt: skip
    base, res = run(scenario([])), run(scenario([fault]))
    rows = fault_rows(res, "nobody")
    assert rows["detail"].tolist() == [
        "nobody: slow_replica on chat: skipped (model chat has 3 ready replica(s), no replica 7)"
    ]
    pd.testing.assert_frame_equal(base.requests, res.requests)


def test_random_faults_repeat_from_their_own_stream_until_the_horizon() -> None:
    fault = {"kind": "error_rate", "name": "flap", "model": "chat", "replica": 0, "share": 1.0,
             "time_to_failure": {"mean_s": 10.0}, "repair_time": {"mean_s": 3.0}}  # fmt: skip
    res = run(scenario([fault], resilience={"retry": LADDER}))
    assert_conserved(res, ["flap"])
    rows = fault_rows(res, "flap")
    starts = rows.loc[rows["detail"].str.endswith("start"), "time_s"].to_numpy()
    ends = rows.loc[rows["detail"].str.endswith("end"), "time_s"].to_numpy()
    assert len(starts) >= 2 and (starts < 60.0).all()
    assert np.all(ends[: len(starts)] > starts[: len(ends)])
    other = run(scenario([fault], resilience={"retry": LADDER}, seed=4))
    assert not np.array_equal(fault_rows(other, "flap")["time_s"].to_numpy()[:2], rows["time_s"].to_numpy()[:2])


def test_the_shipped_faults_scenario_shows_flow_5() -> None:
    res = simulate(load_scenario(REPO / "scenarios" / "faults.yaml"))
    labels = ["crash", "bad-gpu", "straggler", "outage-0", "outage-1", "outage-2", "outage-backup"]
    assert_conserved(res, labels)
    kinds = set(res.events["kind"])
    assert {"fault", "crash", "restart", "retry", "fallback", "ejection", "ejection_end", "alert"} <= kinds
    s = res.summary
    assert 0.8 < s["availability"] < 1.0 and s["retry_amplification"] > 1.0
