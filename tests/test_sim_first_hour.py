"""Issue 13, simulator correctness: the context limit as vLLM enforces it, a warning for prefix-aware routing
without prefix data, GPU-hours integrated over time, and requests to a model that cannot serve ending failed with
a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from odhsim import catalog
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate


def _trace(tmp_path: Path, rows: list[tuple[float, int, int]]) -> str:
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    return str(path)


def _chat_scenario(trace: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "first-hour",
        "seed": 3,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 8}],
        "models": [{"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB", "replicas": 1, **model}],
        "gateway": {"router": {"profile": "round-robin"}},
        "workload": {"sources": [{"kind": "trace", "path": trace}]},
    }


# -- the context limit -----------------------------------------------------------------------------------------


def test_a_request_past_max_model_len_fails_with_the_reason_vllm_gives(tmp_path: Path) -> None:
    # 8,000 + 4,096 > 8,192: vLLM's OpenAI server answers 400 (max_tokens too large); exactly 8,192 fits; a prompt
    # of 8,192 alone leaves no room for a token.
    rows = [(0.0, 8000, 4096), (0.1, 4000, 4192), (0.2, 8192, 1), (0.3, 100, 50)]
    sc = _chat_scenario(_trace(tmp_path, rows), engine={"max_model_len": 8192})
    r = simulate(scenario_from_dict(sc)).requests.sort_values("arrival_s", ignore_index=True)
    assert list(r["status"].astype(str)) == ["failed", "ok", "failed", "ok"]
    assert r.loc[0, "reason"] == "prompt + max_tokens > max_model_len 8192 (vLLM answers 400)"
    assert r.loc[2, "reason"] == "prompt longer than the engine's max_model_len"
    assert list(r["reason"].astype(str)[[1, 3]]) == ["", ""]
    # the ok rows generated what they asked for, within the context
    assert list(r["output_tokens"][[1, 3]]) == [4192, 50]
    assert (r["prompt_tokens"] + r["output_tokens"])[r["status"] == "ok"].max() <= 8192
    assert r["finish_s"][1] > r["first_token_s"][1] > r["arrival_s"][1]


def test_a_pipeline_replica_applies_the_same_context_limit(tmp_path: Path) -> None:
    rows = [(0.0, 8000, 4096), (0.1, 4000, 4192)]
    sc = _chat_scenario(_trace(tmp_path, rows), engine={"max_model_len": 8192}, pp=2)
    sc["gpu_pool"] = [{"gpu": "A100-80GB", "count": 2, "gpus_per_node": 1}]
    r = simulate(scenario_from_dict(sc)).requests.sort_values("arrival_s", ignore_index=True)
    assert list(r["status"].astype(str)) == ["failed", "ok"]
    assert r.loc[0, "reason"] == "prompt + max_tokens > max_model_len 8192 (vLLM answers 400)"


# -- prefix-aware routing without prefix data --------------------------------------------------------------------


def _mooncake(tmp_path: Path) -> str:
    path = tmp_path / "mooncake.jsonl"
    rows = [f'{{"timestamp": {i * 200}, "input_length": 1200, "output_length": 20, "hash_ids": [0, 1, {i + 2}]}}\n'
            for i in range(10)]  # fmt: skip
    path.write_text("".join(rows))
    return str(path)


def _warnings(sc: dict[str, Any]) -> list[str]:
    return simulate(scenario_from_dict(sc)).summary["warnings"]


def test_prefix_routing_warns_exactly_when_the_workload_has_no_prefix_blocks(tmp_path: Path) -> None:
    trace = _trace(tmp_path, [(0.1 * i, 500, 10) for i in range(10)])
    for profile, plugin in [
        ("prefix-aware", "prefix-cache-scorer"),
        ("llm-d-default", "prefix-cache-scorer"),
        ("aibrix-prefix-cache", "aibrix-prefix-cache-picker"),
    ]:
        sc = _chat_scenario(trace)
        sc["gateway"]["router"] = {"profile": profile}
        (warning,) = [w for w in _warnings(sc) if "prefix" in w]
        assert plugin in warning and profile in warning and "no prefix blocks" in warning
    # no warning when the router ignores prefixes (or weighs them 0) or the workload has blocks
    plain = trace
    round_robin = _chat_scenario(plain)
    synthetic = _chat_scenario(plain) | {"gateway": {"router": {"profile": "prefix-aware"}}}
    synthetic["workload"] = {**synthetic["workload"], "prefix": {"system_blocks": 4}}
    mooncake = _chat_scenario(_mooncake(tmp_path)) | {"gateway": {"router": {"profile": "llm-d-default"}}}
    zero_weight = _chat_scenario(plain) | {
        "gateway": {
            "router": {
                "plugins": [
                    {"name": "prefix", "type": "prefix-cache-scorer"},
                    {"name": "queue", "type": "queue-scorer"},
                    {"name": "max", "type": "max-score-picker"},
                ],
                "scorers": [{"plugin": "prefix", "weight": 0.0}, {"plugin": "queue", "weight": 1.0}],
                "picker": "max",
            }
        }
    }
    for sc in (round_robin, synthetic, mooncake, zero_weight):
        assert [w for w in _warnings(sc) if "prefix" in w] == []


# -- cost integrated over time -----------------------------------------------------------------------------------

HOLDING = {"downloading", "loading", "testing", "ready", "draining"}


def lifecycle_gpu_hours(replicas: pd.DataFrame, gpus_per_replica: int) -> float:
    """GPU-hours from the replica lifecycles: from the first state that holds GPUs to `gone` (or the run's end)."""
    total = 0.0
    for _, g in replicas.groupby("replica", observed=True):
        since = None
        for t, state in zip(g["time_s"], g["state"].astype(str), strict=True):
            if state in HOLDING and since is None:
                since = t
            elif state in ("gone", "stopped") and since is not None:
                total += t - since
                since = None
        assert since is None, "every replica ends gone or stopped"
    return total * gpus_per_replica / 3600.0


def _bursty_scale_to_zero(bucket_s: float) -> dict[str, Any]:
    lengths = {"prompt_tokens": {"dist": "fixed", "value": 800}, "output_tokens": {"dist": "fixed", "value": 300}}
    return {
        "name": "burst",
        "seed": 5,
        "duration_s": 400,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 8, "model_cache_gb": 100}],
        "models": [
            {
                "name": "chat",
                "profile": "llama3.1-8b",
                "gpu": "A100-80GB",
                "tp": 2,
                "replicas": 1,
                "autoscaling": {
                    "type": "kpa",
                    "params": {"min_replicas": 0, "max_replicas": 4, "container_concurrency": 2},
                },
            }
        ],
        "gateway": {"router": {"profile": "round-robin"}},
        "workload": {"sources": [{"kind": "poisson", "rate": 6.0, "duration_s": 60, **lengths}]},
        "outputs": {"timeseries_bucket_s": bucket_s},
    }


def test_timeseries_gpu_hours_equal_the_lifecycles_even_inside_one_bucket() -> None:
    # One 3,600 s bucket holds the whole run: replicas scale up for the burst and back to zero before it ends, so
    # charging only the GPUs held at the bucket's end would charge nothing.
    one = simulate(scenario_from_dict(_bursty_scale_to_zero(3600)))
    fine = simulate(scenario_from_dict(_bursty_scale_to_zero(7)))
    started = one.replicas.loc[one.replicas["state"] == "loading", "replica"].nunique()
    assert started >= 2 and len(one.timeseries) == 1 and one.timeseries["gpus"].iloc[0] == 0
    for res in (one, fine):
        ts = res.timeseries
        expected = lifecycle_gpu_hours(res.replicas, gpus_per_replica=2)
        assert expected > 0
        assert abs(ts["gpu_hours"].sum() - expected) <= 1e-9 * expected
        assert abs(ts["cost_usd"].sum() - expected * catalog.gpu("A100-80GB").price_per_gpu_hour) <= 1e-9 * expected
    # energy integrates the same way: bucketing does not change it, and it lies between all-idle and all-busy
    g = catalog.gpu("A100-80GB")
    e1, e2 = one.timeseries["energy_kwh"].sum(), fine.timeseries["energy_kwh"].sum()
    assert abs(e1 - e2) <= 1e-9 * e1
    hours = one.timeseries["gpu_hours"].sum()
    assert hours * g.idle_w / 1000 < e1 < hours * g.decode_w / 1000


# -- a model that cannot serve -----------------------------------------------------------------------------------

_SHORT = {"prompt_tokens": {"dist": "fixed", "value": 200}, "output_tokens": {"dist": "fixed", "value": 20}}


def _unservable(models: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "unservable",
        "seed": 1,
        "duration_s": 60,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 1}],
        "models": models,
        "gateway": {"router": {"profile": "round-robin"}},
        "workload": {"sources": [{"kind": "poisson", "rate": 1.0, "duration_s": 60, **_SHORT}]},
        **extra,
    }


def _ended_once(requests: pd.DataFrame) -> None:
    """Conservation: every request arrived once and ended once (none left unfinished, ids unique)."""
    assert requests["request_id"].is_unique and len(requests) > 20
    assert not (requests["status"] == "unfinished").any() and requests["finish_s"].notna().all()


def test_requests_to_a_model_that_cannot_serve_fail_with_why_and_the_run_records_it() -> None:
    # replicas: 0 without an autoscaler: every request fails at once, and an event says why
    zero = simulate(scenario_from_dict(_unservable([{"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB",
                                                     "replicas": 0}])))  # fmt: skip
    _ended_once(zero.requests)
    assert set(zero.requests["status"].astype(str)) == {"failed"}
    assert set(zero.requests["reason"].astype(str)) == {"model has no replicas, no autoscaler and no fallback"}
    (event,) = zero.events.loc[zero.events["kind"] == "unservable", "detail"]
    assert event == "replicas: 0 and no autoscaler: no replica will ever start"
    # a deployment that does not fit: the deploy event is the rejection, and its reason is every request's
    rejected = simulate(scenario_from_dict(_unservable([{"name": "chat", "profile": "llama3-70b", "gpu": "A100-80GB",
                                                         "replicas": 1}])))  # fmt: skip
    _ended_once(rejected.requests)
    (deploy,) = rejected.events.loc[rejected.events["kind"] == "deploy", "detail"]
    assert deploy.startswith("rejected: llama3-70b")
    assert set(rejected.requests["reason"].astype(str)) == {f"model {deploy}"}
    assert set(rejected.requests["status"].astype(str)) == {"failed"}


def test_requests_held_by_the_activator_for_a_replica_that_never_comes_fail_after_knatives_timeout() -> None:
    # The autoscaler asks for a replica, but the only GPU is held by another model: the activator holds chat's
    # requests for the revision timeout (300 s), then they fail; the run ends by itself instead of at hard_stop_s.
    sc = _unservable(
        [
            {"name": "clf", "kind": "fixed", "gpu": "A100-80GB", "replicas": 1, "concurrency": 2,
             "service_time": {"dist": "exponential", "mean_s": 0.05}},
            {"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB", "replicas": 0,
             "autoscaling": {"type": "kpa", "params": {"min_replicas": 0, "max_replicas": 2}}},
        ],
        hard_stop_s=5000,
    )  # fmt: skip
    sc["workload"]["models"] = {"clf": 1, "chat": 1}
    res = simulate(scenario_from_dict(sc))
    r = res.requests
    _ended_once(r)
    assert not res.summary["hard_stopped"] and res.summary["sim_end_s"] < 400
    chat = r[r["model"] == "chat"]
    assert len(chat) > 10 and set(chat["status"].astype(str)) == {"failed"}
    assert set(chat["reason"].astype(str)) == {"activator request timeout: no ready replica within 300 s"}
    waited = chat["finish_s"] - chat["arrival_s"]
    assert ((waited - 300.0).abs() < 1e-6).all()
    assert set(r.loc[r["model"] == "clf", "status"].astype(str)) == {"ok"}
