"""Issue 13, simulator correctness: the context limit as vLLM enforces it, a warning for prefix-aware routing
without prefix data, GPU-hours integrated over time, and requests to a model that cannot serve ending failed with
a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
