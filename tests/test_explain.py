"""odhsim.explain: each anomaly constructed in a small scenario and detected with the right span, a clean run that
reports none; counterfactual routing regret; `odhsim explain`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.explain.anomalies import KINDS
from odhsim.results.decisions import read_decisions
from odhsim.results.run_result import RunResult
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate


def csv_trace(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    """A plain CSV trace: arrival_s, prompt_tokens, output_tokens."""
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    return path


def mooncake_trace(path: Path, rows: list[tuple[float, int, int, list[int]]]) -> Path:
    """Mooncake JSON lines (timestamps in ms, hash_ids naming 512-token prompt blocks)."""
    lines = [
        json.dumps({"timestamp": int(t * 1000), "input_length": p, "output_length": o, "hash_ids": ids})
        for t, p, o, ids in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def llm(name: str = "chat", replicas: int = 1, **engine: Any) -> dict[str, Any]:
    return {"name": name, "profile": "llama3-8b", "gpu": "A100-80GB", "replicas": replicas, "engine": engine}


def scenario(models: list[dict[str, Any]], sources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    gpus = sum(m.get("replicas", 1) for m in models)
    return {
        "name": "explain",
        "seed": 3,
        "gpu_pool": [{"gpu": "A100-80GB", "count": max(gpus, 1) + 4}, {"gpu": "T4", "count": 8}],
        "models": models,
        "workload": {"sources": sources},
        **extra,
    }


def run(d: dict[str, Any], tmp_path: Path) -> RunResult:
    return simulate(scenario_from_dict(d, base_dir=tmp_path))


def episodes(res: RunResult, kind: str) -> pd.DataFrame:
    ev = res.events
    rows = ev[(ev["kind"] == "anomaly") & ev["detail"].astype(str).str.startswith(kind + " ")]
    return rows.reset_index(drop=True)


def only(res: RunResult, kind: str) -> None:
    """`kind` was found (count >= 1, one event per episode) and no other kind was."""
    counts = res.summary["anomalies"]
    assert set(counts) == set(KINDS)
    assert counts[kind] >= 1, counts
    assert len(episodes(res, kind)) == counts[kind]
    assert {k: v for k, v in counts.items() if k != kind and v} == {}, counts


def test_clean_run_reports_no_anomaly(tmp_path: Path) -> None:
    d = scenario(
        [llm(replicas=2)],
        [{"kind": "poisson", "rate": 1.0, "duration_s": 60,
          "prompt_tokens": {"dist": "fixed", "value": 500}, "output_tokens": {"dist": "fixed", "value": 50}}],
        gateway={"router": {"profile": "round-robin"}},
    )  # fmt: skip
    d["workload"]["priorities"] = {"critical": 0.5, "low": 0.5}
    res = run(d, tmp_path)
    assert res.summary["completed"] == res.summary["requests"] > 30
    assert res.summary["anomalies"] == dict.fromkeys(KINDS, 0)
    assert not (res.events["kind"] == "anomaly").any()


def test_priority_inversion_fcfs_replica_serves_low_while_critical_is_late(tmp_path: Path) -> None:
    """One fixed-concurrency replica serving FCFS, overloaded: low requests ahead in the queue start while a
    critical one behind them is already past its 1 s TTFT target."""
    d = scenario(
        [{"name": "clf", "kind": "fixed", "gpu": "T4", "replicas": 1, "concurrency": 1,
          "service_time": {"dist": "exponential", "mean_s": 0.5}}],
        [{"kind": "poisson", "rate": 3.0, "duration_s": 30,
          "prompt_tokens": {"dist": "fixed", "value": 10}, "output_tokens": {"dist": "fixed", "value": 1}}],
    )  # fmt: skip
    d["workload"]["priorities"] = {"critical": 0.3, "low": 0.7}
    res = run(d, tmp_path)
    only(res, "priority_inversion")
    r = res.requests
    late_critical = r[(r["priority"] == "critical") & (r["start_s"] - r["arrival_s"] > 1.0)]
    assert len(late_critical)
    ep = episodes(res, "priority_inversion").iloc[0]
    assert ep["model"] == "clf"
    # the first inverted start is a low request starting after the first critical request went past its target
    first_late = float((late_critical["arrival_s"] + 1.0).min())
    assert ep["time_s"] >= first_late - 1e-9
    low_starts = r.loc[r["priority"] == "low", "start_s"]
    assert ((low_starts - ep["time_s"]).abs() < 1e-9).any()


def test_head_of_line_blocking_big_prompt_holds_small_ones(tmp_path: Path) -> None:
    """vLLM V0 FCFS on a small KV cache (841 blocks of 16 tokens): decoding requests fill it, a 7,000-token
    prompt cannot be admitted and the 200-token prompts behind it wait although they would fit, while two of
    the decoding requests finish; they start together with the big one."""
    rows = [(0.0, 1000, 300), (0.0, 500, 600), (0.0, 5000, 3000), (0.0, 2500, 3000), (1.0, 7000, 10)]
    rows += [(1.1 + 0.1 * i, 200, 10) for i in range(4)]
    trace = csv_trace(tmp_path / "hol.csv", rows)
    d = scenario(
        [llm(gpu_memory_utilization=0.22, max_model_len=8192, scheduler="prefill-first", enable_prefix_caching=False)],
        [{"kind": "trace", "path": str(trace)}],
    )
    res = run(d, tmp_path)
    only(res, "head_of_line_blocking")
    r = res.requests.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    big = r.iloc[4]
    small = r.iloc[5:]
    assert (small["start_s"] >= big["start_s"]).all() and (small["start_s"] - small["arrival_s"] > 0.5).all()
    ep = episodes(res, "head_of_line_blocking").iloc[0]
    assert ep["replica"] == big["replica"]
    assert ep["time_s"] == pytest.approx(1.1)  # the span opens when the first small request arrived behind it
    assert f"request {int(big['request_id'])} (7000 prompt tokens) held 4 smaller" in ep["detail"]
    assert f"-{big['start_s']:.2f} s" in ep["detail"]


def stale_routing(router: str, scrape_s: float) -> dict[str, Any]:
    return scenario(
        [llm(replicas=4)],
        [{"kind": "poisson", "rate": 8.0, "duration_s": 60,
          "prompt_tokens": {"dist": "fixed", "value": 1000}, "output_tokens": {"dist": "fixed", "value": 300}}],
        gateway={"router": {"profile": router}, "scrape_interval_s": scrape_s},
    )  # fmt: skip


def test_herding_on_stale_kv_metrics(tmp_path: Path) -> None:
    """kv-aware routing on metrics scraped every 3 s (Mooncake's ticks): every request of a tick goes to the
    replica that looked emptiest at the last scrape."""
    d = stale_routing("kv-aware", 3.0)
    d["outputs"] = {"decisions": "all"}
    res = run(d, tmp_path)
    counts = res.summary["anomalies"]
    assert counts["herding"] >= 1
    ep = episodes(res, "herding")
    # with decisions recorded, odhsim explain says how stale the metrics behind the herded picks were (3 s scrapes)
    overview = json.loads(explain_cli(str(res.write(tmp_path / "herd")), "--json").output)
    herd = [e for e in overview["episodes"] if e["detail"].startswith("herding ")]
    assert len(herd) == counts["herding"]
    lo, hi = herd[0]["picks_metrics_age_s"]
    assert 0.0 <= lo <= hi < 3.0 + 1e-9 and hi > 0.5  # stale: well past the default 50 ms scrape
    assert (ep["time_s"] % 3.0 == 0).all()  # windows are the scrape ticks
    r = res.requests
    first = ep.iloc[0]
    t0 = first["time_s"]
    in_tick = r[(r["arrival_s"] >= t0) & (r["arrival_s"] < t0 + 3.0)]
    assert in_tick["replica"].astype(str).value_counts().iloc[0] >= 0.75 * len(in_tick)


def test_round_robin_on_fresh_metrics_does_not_herd(tmp_path: Path) -> None:
    res = run(stale_routing("round-robin", 0.05), tmp_path)
    assert res.summary["anomalies"]["herding"] == 0


def test_preemption_storm_when_decodes_outgrow_a_small_kv_cache(tmp_path: Path) -> None:
    """Forty 500-token prompts decoding 2,000 tokens each on 841 KV blocks: the batch outgrows the cache and
    the newest requests are preempted and recomputed over and over."""
    trace = csv_trace(tmp_path / "storm.csv", [(0.01 * i, 500, 2000) for i in range(40)])
    d = scenario(
        [llm(gpu_memory_utilization=0.22, max_model_len=8192)],
        [{"kind": "trace", "path": str(trace)}],
        outputs={"timeseries_bucket_s": 5.0},
    )
    res = run(d, tmp_path)
    counts = res.summary["anomalies"]
    assert counts["preemption_storm"] >= 1, counts
    ts = res.timeseries
    assert int(ts["preemptions"].sum()) == res.summary["preemptions"] > 0  # the column adds up to the total
    ep = episodes(res, "preemption_storm").iloc[0]
    flagged = ts[(ts["time_s"] > ep["time_s"]) & (ts["time_s"] <= ep["time_s"] + 5.0)]
    assert int(flagged["preemptions"].iloc[0]) >= 5  # at least one a second over the 5 s bucket


def test_cache_stampede_repeats_miss_while_the_first_is_in_flight(tmp_path: Path) -> None:
    """Five exact repeats 100 ms apart while the first is still decoding: every one misses the response cache
    and is computed again."""
    rows = [(10.0 + 0.1 * i, 1024, 400, [7, 8]) for i in range(5)] + [(60.0, 1024, 10, [9, 10])]
    trace = mooncake_trace(tmp_path / "stampede.jsonl", rows)
    d = scenario(
        [llm()],
        [{"kind": "trace", "path": str(trace)}],
        gateway={"response_cache": {"type": "tiered"}},
    )
    res = run(d, tmp_path)
    only(res, "cache_stampede")
    ep = episodes(res, "cache_stampede").iloc[0]
    # the first miss: the trace is rebased to start at 0, and a miss costs the local and the shared lookup
    assert ep["time_s"] == pytest.approx(0.005 + 0.010, abs=1e-9)
    assert "5 misses of one key in flight together (peak 5)" in ep["detail"]
    assert not res.requests["cache_hit"].any()


def test_replica_starved_while_prefix_routing_piles_onto_one(tmp_path: Path) -> None:
    """Prefix-only routing sends every request sharing a hot prefix to one replica (two sequences at a time),
    where they queue, while the other replica stays empty."""
    rows = [(0.5 * i, 1024, 200, [1, 2]) for i in range(60)]
    trace = mooncake_trace(tmp_path / "hot.jsonl", rows)
    d = scenario(
        [llm(replicas=2, max_num_seqs=2)],
        [{"kind": "trace", "path": str(trace)}],
        gateway={"router": {"profile": "prefix-aware"}},
    )
    res = run(d, tmp_path)
    counts = res.summary["anomalies"]
    assert counts["replica_starved"] >= 1, counts
    served = res.requests["replica"].astype(str).value_counts()
    ep = episodes(res, "replica_starved").iloc[0]
    assert ep["replica"] not in served.index[:1].tolist()  # the starved one is not the one everything went to
    assert ep["time_s"] >= 0


def test_autoscaler_flapping_under_on_off_bursts(tmp_path: Path) -> None:
    """KPA with a 10 s stable window under bursts every 20 s: it scales up for each burst and back
    down before the next, a reversal well inside Knative's 60 s stable window."""
    rows = [(20.0 * k + 0.05 * i, 10, 1) for k in range(6) for i in range(20)]
    trace = csv_trace(tmp_path / "bursts.csv", rows)
    d = scenario(
        [{"name": "clf", "kind": "fixed", "gpu": "T4", "replicas": 1, "concurrency": 1,
          "service_time": {"dist": "deterministic", "mean_s": 1.0},
          "autoscaling": {"type": "kpa", "params": {"min_replicas": 1, "max_replicas": 6, "container_concurrency": 1,
                                                    "stable_window_s": 10, "panic_window_percentage": 10,
                                                    "tick_s": 1, "target_utilization": 1.0}}}],
        [{"kind": "trace", "path": str(trace)}],
    )  # fmt: skip
    res = run(d, tmp_path)
    counts = res.summary["anomalies"]
    assert counts["autoscaler_flapping"] >= 1, counts
    ev = res.events
    scale = ev[ev["kind"] == "scale"].reset_index(drop=True)
    ep = episodes(res, "autoscaler_flapping").iloc[0]
    # the episode opens at a scale event, and the next scale event reverses it within 60 s
    i = int(scale.index[scale["time_s"] == ep["time_s"]][0])
    assert scale["time_s"].iloc[i + 1] - scale["time_s"].iloc[i] <= 60.0
    assert "then" in ep["detail"]


# -- counterfactual regret -------------------------------------------------------------------------------------------

PROMPT, OUTPUT = 800, 120


def regret_scenario(router: dict[str, Any]) -> dict[str, Any]:
    """Four replicas under a load that builds queues on some of them, every decision recorded."""
    return scenario(
        [llm(replicas=4, max_num_seqs=4)],
        [{"kind": "poisson", "rate": 12.0, "duration_s": 40,
          "prompt_tokens": {"dist": "fixed", "value": PROMPT}, "output_tokens": {"dist": "fixed", "value": OUTPUT}}],
        gateway={"router": router, "scrape_interval_s": 0.05},
        outputs={"decisions": "all"},
    )  # fmt: skip


def hindsight_router() -> dict[str, Any]:
    """latency-estimate-picker given the yardstick regret uses: the model's coefficients and the workload's sizes."""
    from odhsim.explain.regret import estimate_params
    from odhsim.profiles.latency import latency_model

    params = estimate_params(latency_model("llama3-8b", "A100-80GB", 1), np.array([PROMPT]), np.array([OUTPUT]))
    picker = {"name": "hindsight", "type": "latency-estimate-picker", "params": params.model_dump()}
    return {"plugins": [picker], "filters": [], "scorers": [], "picker": "hindsight"}


def test_regret_is_zero_for_the_hindsight_picker_and_positive_for_random(tmp_path: Path) -> None:
    hindsight = run(regret_scenario(hindsight_router()), tmp_path)
    rand = run(regret_scenario({"profile": "random"}), tmp_path)
    for res in (hindsight, rand):
        assert res.decisions is not None
        routed = int((res.decisions["kind"] == "route").sum())
        assert res.summary["regret"]["chat"]["decisions"] == routed > 300
    h, r = hindsight.summary["regret"]["chat"], rand.summary["regret"]["chat"]
    assert h["mean_s"] == h["p90_s"] == h["share_positive"] == 0.0
    assert hindsight.summary["regret_mean_s"] == 0.0
    assert r["policy"] == "random" and h["policy"] == "custom"
    assert r["share_positive"] > 0.3 and r["mean_s"] > 0.0 and r["p90_s"] > 0.0
    assert rand.summary["regret_mean_s"] == pytest.approx(r["mean_s"])
    worst = r["worst"][0]
    assert worst["regret_s"] == pytest.approx(r["worst"][0]["regret_s"]) and worst["regret_s"] >= r["p90_s"]
    picked, best = worst["candidates"][worst["pick"]], worst["candidates"][worst["best"]]
    assert picked["estimate_s"] - best["estimate_s"] == pytest.approx(worst["regret_s"])
    assert picked["waiting"] + picked["running"] > best["waiting"] + best["running"]


def test_no_regret_without_decisions(tmp_path: Path) -> None:
    d = regret_scenario({"profile": "random"})
    d["outputs"] = {"decisions": "none"}
    res = run(d, tmp_path)
    assert "regret" not in res.summary and res.decisions is None


def test_array_estimate_equals_the_scalar_one_bit_for_bit() -> None:
    """Regret scores whole runs with the array form; the picker uses the scalar one: they must agree exactly."""
    from policies.routing.latency_estimate import EstimateCoefficients, estimate_ttft_array, estimate_ttft_s

    c = EstimateCoefficients(0.011, 7.3e-5, 1.1e-9, 0.0071, 1.3e-4, 2.9e-7, 4096, 3.1e-5, 812.5, 901.25, 177.0)
    rng = np.random.default_rng(5)
    n = 2000
    prompt, cached = rng.integers(1, 9000, n), rng.integers(-1, 9000, n)
    waiting, running, kv = rng.integers(0, 40, n), rng.integers(0, 300, n), rng.uniform(0.8, 1.0, n)
    got = estimate_ttft_array(c, prompt, cached, waiting, running, kv)
    want = [estimate_ttft_s(c, int(p), int(h), int(w), int(r), float(k))
            for p, h, w, r, k in zip(prompt, cached, waiting, running, kv, strict=True)]  # fmt: skip
    assert got.tolist() == want


# -- odhsim explain --------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def faults_results(tmp_path: Path, decisions: str) -> Path:
    """scenarios/faults.yaml's first 20 s (a chat replica crashes at 15 s: what it held is retried), written."""
    from odhsim.scenario.load import load_scenario

    sc = load_scenario(ROOT / "scenarios" / "faults.yaml", ["duration_s=20", f"outputs.decisions={decisions}"])
    out = tmp_path / decisions
    simulate(sc).write(out)
    return out


def explain_cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from odhsim.cli import app

    return CliRunner().invoke(app, ["explain", *args], env={"COLUMNS": "200"})


def test_explain_request_prints_every_attempt_of_a_retried_request(tmp_path: Path) -> None:
    out = faults_results(tmp_path, "all")
    requests = pd.read_parquet(out / "requests.parquet")
    retried = requests[(requests["attempts"] >= 2) & (requests["status"] == "ok")].iloc[0]
    rid = int(retried["request_id"])
    decisions = read_decisions(out / "decisions.parquet")
    routes = decisions[(decisions["request_id"] == rid) & (decisions["kind"] == "route")].sort_values("time_s")
    assert routes["attempt"].tolist() == list(range(1, int(retried["attempts"]) + 1))
    assert routes["replica"].iloc[-1] == retried["replica"]

    res = explain_cli(str(out), "--request", str(rid))
    assert res.exit_code == 0, res.output
    assert f"request {rid} (chat, normal, tenant team-a): {int(retried['prompt_tokens'])} prompt tokens" in res.output
    for attempt, pick in zip(routes["attempt"], routes["replica"], strict=True):
        assert f"route: attempt {attempt} -> {pick} (picked by max-score-picker" in res.output
    assert "retry: attempt 1 failed (reset): retry on chat" in res.output
    assert f"{'served by':<15} {retried['replica']}" in res.output
    assert "active-request-scorer" in res.output  # the candidates' scores

    res = explain_cli(str(out), "--request", str(rid), "--json")
    life = json.loads(res.output)
    steps = life["decisions"]
    assert [s["attempt"] for s in steps if s["kind"] == "route"] == routes["attempt"].tolist()
    first = next(s for s in steps if s["kind"] == "route")
    assert {c["name"] for c in first["candidates"]} >= {routes["replica"].iloc[0]}
    assert sum(c["picked"] for c in first["candidates"]) == 1
    assert all(c["estimate_s"] > 0 for c in first["candidates"] if not c["filtered_by"])

    res = explain_cli(str(out), "--json")
    overview = json.loads(res.output)
    assert overview["anomalies"] == dict.fromkeys(KINDS, 0) and overview["decisions_recorded"]
    assert overview["regret"]["chat"]["decisions"] == int(((decisions["kind"] == "route")
                                                            & (decisions["model"] == "chat")).sum())  # fmt: skip


def test_explain_errors_name_the_problem(tmp_path: Path) -> None:
    res = explain_cli(str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "no such results folder" in res.output
    (tmp_path / "empty").mkdir()
    res = explain_cli(str(tmp_path / "empty"))
    assert res.exit_code == 2 and "not a run's results folder (missing requests.parquet" in res.output
    out = faults_results(tmp_path, "none")
    n = len(pd.read_parquet(out / "requests.parquet"))
    res = explain_cli(str(out), "--request", str(n + 5))
    assert res.exit_code == 2 and f"request {n + 5} is not in requests.parquet (ids run 0..{n - 1})" in res.output
    res = explain_cli(str(out), "--request", "0")
    assert res.exit_code == 2 and "no decisions.parquet" in res.output and "outputs.decisions=all" in res.output
    res = explain_cli(str(out))  # the overview still works, and says why there is no regret
    assert res.exit_code == 0 and "no routing regret: decisions were not recorded" in res.output
    assert "Traceback" not in res.output


def test_explain_detects_anomalies_in_results_without_counts(tmp_path: Path) -> None:
    """Results whose summary.json has no anomaly counts (odhsim serve's, an older run's) are examined on the spot,
    with the SLOs the run kept, and find what the simulator found while running."""
    d = scenario(
        [{"name": "clf", "kind": "fixed", "gpu": "T4", "replicas": 1, "concurrency": 1,
          "service_time": {"dist": "exponential", "mean_s": 0.5}}],
        [{"kind": "poisson", "rate": 3.0, "duration_s": 30,
          "prompt_tokens": {"dist": "fixed", "value": 10}, "output_tokens": {"dist": "fixed", "value": 1}}],
        outputs={"timeseries_bucket_s": 10.0},
    )  # fmt: skip
    d["workload"]["priorities"] = {"critical": 0.3, "low": 0.7}
    res = run(d, tmp_path)
    out = res.write(tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    expected = summary.pop("anomalies")
    (out / "summary.json").write_text(json.dumps(summary))
    events = pd.read_parquet(out / "events.parquet")
    events[events["kind"] != "anomaly"].to_parquet(out / "events.parquet", index=False)
    overview = json.loads(explain_cli(str(out), "--json").output)
    assert overview["anomalies"] == expected and expected["priority_inversion"] >= 1
    assert "detected now" in overview["note"]
    assert [e["detail"] for e in overview["episodes"]] == events.loc[events["kind"] == "anomaly", "detail"].tolist()
