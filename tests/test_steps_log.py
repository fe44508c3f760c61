"""The simulator's step log (`outputs.steps: true`): one row per engine step, summing to the requests' tokens, each
lasting what the latency model predicts for its shape; off, there is no table and nothing else changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.profiles.latency import latency_model
from odhsim.results.run_result import load_results
from odhsim.results.steps import COLUMNS
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from tests.conftest import REPO_ROOT, fixed_model_scenario


def prefix_scenario(scheduler: str, steps: bool = True, **engine: Any) -> dict[str, Any]:
    """The Mooncake trace's first minute (prefix blocks, so the cache hits) on two llama3.1-8b replicas; prompts
    over 32k tokens fail at arrival (V0 needs a step budget of max_model_len)."""
    budget = 8192 if scheduler == "chunked-prefill" else 32768
    return {
        "name": "steps",
        "seed": 5,
        "gpu_pool": [{"gpu": "H100-80GB", "count": 2}],
        "models": [
            {
                "name": "chat",
                "profile": "llama3.1-8b",
                "gpu": "H100-80GB",
                "replicas": 2,
                "engine": {
                    "max_num_seqs": 16,
                    "max_num_batched_tokens": budget,
                    "max_model_len": 32768,
                    "block_size": 16,
                    "enable_prefix_caching": True,
                    "scheduler": scheduler,
                    **engine,
                },
            }
        ],
        "gateway": {"router": {"profile": "llm-d-default"}},
        "workload": {
            "sources": [{"kind": "trace", "path": "../traces/mooncake/conversation_trace.jsonl", "window": [0, 60]}]
        },
        "outputs": {"timeseries_bucket_s": 1.0, "steps": steps},
    }


def run(sc: dict[str, Any]):  # type: ignore[no-untyped-def]
    return simulate(scenario_from_dict(sc, base_dir=REPO_ROOT / "scenarios"))


def predicted_s(steps: pd.DataFrame, sc: dict[str, Any]) -> np.ndarray:
    """Each row's duration from the replica's latency model and the row's shape alone."""
    scenario = scenario_from_dict(sc, base_dir=REPO_ROOT / "scenarios")
    m = scenario.models[0]
    lm = latency_model(m.profile, m.gpu, m.tp, m.pp)
    return np.array([
        lm.prefill_s(int(r.prefill_tokens), int(r.prefill_attention_tokens))
        + lm.decode_step_s(int(r.decode_seqs), int(r.context_tokens))
        for r in steps.itertuples()
    ])  # fmt: skip


def assert_steps_tile(steps: pd.DataFrame) -> None:
    """An engine runs one step at a time: each of a replica's steps starts once the one before ended."""
    for _, rows in steps.groupby("replica", observed=True):
        t, d = rows["time_s"].to_numpy(), rows["duration_s"].to_numpy()
        assert np.all(t[1:] >= t[:-1] + d[:-1] - 1e-9)


@pytest.mark.parametrize("scheduler", ["chunked-prefill", "prefill-first"])
def test_llm_steps_sum_to_the_requests_tokens_and_last_what_the_latency_model_says(scheduler: str) -> None:
    sc = prefix_scenario(scheduler)
    res = run(sc)
    r, steps = res.requests, res.steps
    assert steps is not None and list(steps.columns) == ["run_id", "seed", "scenario", *COLUMNS]
    assert res.summary["preemptions"] == 0 and set(r["status"]) == {"ok", "failed"}
    r = r[r["status"] == "ok"]  # the failed ones were refused at arrival (too long) and computed nothing
    assert len(r) > 100 and r["cached_tokens"].sum() > 0  # the prefix cache hit: the sum below leaves hits out
    assert set(steps["kind"]) == {"llm"} and set(steps["replica"]) == {"chat-v1-0", "chat-v1-1"}
    # every prompt token not served from the cache was computed in exactly one step
    assert steps["prefill_tokens"].sum() == (r["prompt_tokens"] - r["cached_tokens"]).sum()
    # a request's first token comes from the step that finishes its prompt, every other one from a decode row
    assert steps["decode_seqs"].sum() == (r["output_tokens"] - 1).sum()
    if scheduler == "prefill-first":  # V0: a whole prompt per step, never decoding in a prompt step
        assert steps["prefill_seqs"].sum() == len(r)
        assert ((steps["prefill_tokens"] == 0) | (steps["decode_seqs"] == 0)).all()
    else:  # V1: long prompts span several chunks, and prompt steps decode the running batch too
        assert steps["prefill_seqs"].sum() > len(r)
        assert ((steps["prefill_tokens"] > 0) & (steps["decode_seqs"] > 0)).any()
    assert (steps["batch_size"] == steps["prefill_seqs"] + steps["decode_seqs"]).all()
    assert (steps["batch_size"] <= 16).all() and (steps["host_tokens"] == 0).all()
    np.testing.assert_allclose(steps["duration_s"].to_numpy(), predicted_s(steps, sc), rtol=1e-9, atol=0)
    assert_steps_tile(steps)
    assert (steps["kv_blocks_used"] > 0).all() and (steps["kv_blocks_used"] <= steps["kv_blocks_total"]).all()
    assert (steps["block_size"] == 16).all() and steps["time_s"].is_monotonic_increasing


@pytest.mark.parametrize("scheduler", ["chunked-prefill", "prefill-first"])
def test_preemptions_are_counted_in_the_steps_that_made_them(scheduler: str) -> None:
    # a KV cache of about 10k tokens (llama3.2-1b on 4.5% of an A100) for up to 64 sequences of ~900 tokens
    sc = prefix_scenario(scheduler, gpu_memory_utilization=0.045, max_model_len=4096, max_num_seqs=64)
    sc["models"][0].update(profile="llama3.2-1b", gpu="A100-80GB", replicas=1)
    sc["gpu_pool"] = [{"gpu": "A100-80GB", "count": 1}]
    sc["workload"]["sources"] = [{
        "kind": "poisson", "rate": 8.0, "duration_s": 30,
        "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.5, "max": 2000},
        "output_tokens": {"dist": "lognormal", "median": 300, "sigma": 0.5, "max": 1500},
    }]  # fmt: skip
    res = run(sc)
    steps, r = res.steps, res.requests
    assert steps is not None and res.summary["preemptions"] > 0
    assert steps["preemptions"].sum() == res.summary["preemptions"]
    ok = r[r["status"] == "ok"]
    assert len(ok) == len(r)
    assert steps["prefill_tokens"].sum() > (r["prompt_tokens"] - r["cached_tokens"]).sum()  # recomputation
    if scheduler == "prefill-first":
        # V0: one prompt (recomputed ones included) per prefill row; each yields a token, as each decode row does
        assert steps["decode_seqs"].sum() + steps["prefill_seqs"].sum() == ok["output_tokens"].sum()
        assert steps["prefill_seqs"].sum() == len(r) + res.summary["preemptions"]
    np.testing.assert_allclose(steps["duration_s"].to_numpy(), predicted_s(steps, sc), rtol=1e-9, atol=0)
    assert (steps["kv_blocks_used"] <= steps["kv_blocks_total"]).all()
    assert_steps_tile(steps)


def test_fixed_replicas_log_one_row_per_service() -> None:
    sc = fixed_model_scenario(servers=2, rate=1.5, requests=300, mean_s=1.0)
    sc["outputs"]["steps"] = True
    res = run(sc)
    steps, r = res.steps, res.requests
    assert steps is not None and len(steps) == len(r) == 300
    assert set(steps["kind"]) == {"fixed"} and (steps["batch_size"] == 1).all()
    assert (steps[["prefill_tokens", "decode_seqs", "context_tokens", "kv_blocks_used"]] == 0).all().all()
    served = r.sort_values("start_s", kind="stable")
    np.testing.assert_allclose(steps["time_s"], served["start_s"])
    np.testing.assert_allclose(np.sort(steps["duration_s"]), np.sort(served["finish_s"] - served["start_s"]))


def test_off_writes_no_table_and_changes_nothing(tmp_path) -> None:
    on, off = run(prefix_scenario("chunked-prefill")), run(prefix_scenario("chunked-prefill", steps=False))
    assert off.steps is None and on.steps is not None and len(on.steps) > 0
    for name in ("requests", "replicas", "timeseries", "events"):
        pd.testing.assert_frame_equal(getattr(on, name), getattr(off, name))
    skip = {"wall_s", "sim_requests_per_wall_s"}
    assert {k: v for k, v in on.summary.items() if k not in skip} == {
        k: v for k, v in off.summary.items() if k not in skip
    }
    off.write(tmp_path / "off")
    on.write(tmp_path / "on")
    assert not (tmp_path / "off" / "steps.parquet").exists() and "steps" not in load_results(tmp_path / "off")
    back = load_results(tmp_path / "on")["steps"]
    pd.testing.assert_frame_equal(back, on.steps, check_categorical=False)


def test_a_dynamic_batcher_logs_one_row_per_batch() -> None:
    import simpy

    from odhsim.results.steps import StepLog
    from odhsim.sim.fixed_replica import BatchingReplica
    from odhsim.sim.replica_factory import attach
    from odhsim.sim.request import SimRequest

    env = simpy.Environment()
    done: list[float] = []
    replica = BatchingReplica(
        env, 0, "clf-v1-0", "clf", 0.05, lambda req, now, status, reason: done.append(now),
        service_s=lambda n: 0.1 + 0.01 * n, max_batch_size=4, max_delay_s=0.01,
    )  # fmt: skip
    log = StepLog()
    attach(replica, log)
    for row in range(10):
        replica.submit(SimRequest(row, 0.0, 1, 1, 0, 2, 0, -1, None))
    env.run()
    steps = log.to_frame()
    assert steps["batch_size"].tolist() == [4, 4, 2] and set(steps["kind"]) == {"fixed"}
    np.testing.assert_allclose(steps["duration_s"], [0.14, 0.14, 0.12])
    np.testing.assert_allclose(steps["time_s"], [0.0, 0.14, 0.29])  # the last two wait out max_delay_s
    assert len(done) == 10
