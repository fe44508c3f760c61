"""The gateway's response cache inside the simulator: exact repeats hit, near repeats and in-flight repeats miss.

A tiny Mooncake-format trace (timestamps in ms, `hash_ids` naming 512-token prompt blocks) is replayed against
one llama3.2-1b replica. The cache key is (model, version, max_tokens, prompt block ids, prompt tokens), and a
response is stored only when its request finishes ok, so only repeats arriving after the original finished hit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.results.run_result import RunResult
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate

LOCAL_S = 0.005  # TieredCacheParams defaults: local lookup 5 ms, shared lookup 10 ms more
SHARED_S = 0.010

# (timestamp ms, input_length, output_length, hash_ids, label)
TRACE: list[tuple[int, int, int, list[int], str]] = [
    (0, 1000, 50, [1, 2], "A"),
    (10_000, 1000, 50, [1, 2], "A repeat"),  # A finished long ago: hit
    (20_000, 1000, 60, [1, 2], "A other max_tokens"),  # same blocks, other output length: another key
    (21_000, 990, 50, [1, 2], "A other prompt length"),  # same blocks, other prompt length: another key
    (30_000, 700, 500, [3, 4], "B"),  # 500 output tokens: still decoding 100 ms later
    (30_100, 700, 500, [3, 4], "B repeat in flight"),  # B has not finished: miss
    (40_000, 700, 500, [3, 4], "B repeat"),  # hit
    (50_000, 300, 10, [5], "C"),
    (60_000, 1000, 50, [1, 2], "A repeat later"),  # within the 300 s TTL: hit
]
LABELS = [row[-1] for row in TRACE]
EXPECTED_HITS = {"A repeat", "B repeat", "A repeat later"}


def write_trace(path: Path) -> Path:
    lines = [
        json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids})
        for ts, inp, out, ids, _ in TRACE
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def scenario(trace: Path, response_cache: dict[str, Any] | None) -> dict[str, Any]:
    gateway: dict[str, Any] = {"router": {"profile": "round-robin"}}
    if response_cache is not None:
        gateway["response_cache"] = response_cache
    return {
        "name": "response-cache",
        "seed": 1,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 1}],
        "models": [{"name": "chat", "profile": "llama3.2-1b", "gpu": "A100-80GB", "replicas": 1}],
        "gateway": gateway,
        "workload": {"sources": [{"kind": "trace", "path": str(trace)}]},
        "outputs": {"timeseries_bucket_s": 1.0},
    }


def run(tmp_path: Path, response_cache: dict[str, Any] | None) -> RunResult:
    trace = write_trace(tmp_path / "trace.jsonl")
    return simulate(scenario_from_dict(scenario(trace, response_cache), base_dir=tmp_path))


def labelled(result: RunResult) -> pd.DataFrame:
    r = result.requests.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    assert len(r) == len(TRACE)
    np.testing.assert_allclose(r["arrival_s"], [row[0] / 1e3 for row in TRACE])
    return r.set_index(pd.Index(LABELS, name="label"))


def assert_conserved(result: RunResult) -> None:
    s = result.summary
    assert s["requests"] == len(result.requests)
    assert s["requests"] == s["completed"] + s["shed"] + s["failed"] + s["timeout"] + s["in_flight_at_stop"]
    assert s["completed"] == len(TRACE)  # nothing is shed, fails or is cut off in this light load


def test_exact_repeats_hit_after_the_lookup_latency_without_a_replica(tmp_path: Path) -> None:
    res = run(tmp_path, {"type": "tiered"})
    r = labelled(res)
    hits = r[r["cache_hit"]]
    assert set(hits.index) == EXPECTED_HITS
    assert (hits["status"] == "ok").all()
    # a hit is answered by the gateway after the local tier's lookup: first token and finish at once
    np.testing.assert_allclose(hits["finish_s"] - hits["arrival_s"], LOCAL_S, rtol=0, atol=1e-9)
    np.testing.assert_allclose(hits["first_token_s"], hits["finish_s"], rtol=0, atol=0)
    assert hits["replica"].isna().all()  # no replica saw it (a missing category in the tidy table)
    assert hits["start_s"].isna().all()
    assert (hits["cached_tokens"] == 0).all()

    misses = r[~r["cache_hit"]]
    assert (misses["status"] == "ok").all()
    assert misses["replica"].notna().all()
    assert (misses["finish_s"] - misses["arrival_s"] > LOCAL_S).all()
    # a miss pays both lookups (local, then the shared tier that is on by default) before reaching the replica
    assert (misses["start_s"] - misses["arrival_s"] >= LOCAL_S + SHARED_S - 1e-9).all()

    s = res.summary
    assert s["response_cache_hit_rate"] == pytest.approx(len(hits) / len(r))
    assert s["response_cache_hit_rate"] == pytest.approx(3 / 9)
    assert_conserved(res)


def test_near_repeats_miss(tmp_path: Path) -> None:
    r = labelled(run(tmp_path, {"type": "tiered"}))
    # same prompt blocks as A but another max_tokens or another prompt length: a different response
    for label in ("A other max_tokens", "A other prompt length"):
        assert not r.loc[label, "cache_hit"], label
        assert pd.notna(r.loc[label, "replica"])
        # ... served by the replica, whose prefix cache still holds A's blocks (a prefix hit, not a response hit)
        assert r.loc[label, "cached_tokens"] > 0


def test_repeat_arriving_while_the_original_runs_misses(tmp_path: Path) -> None:
    r = labelled(run(tmp_path, {"type": "tiered"}))
    original, repeat = r.loc["B"], r.loc["B repeat in flight"]
    assert repeat["arrival_s"] < original["finish_s"]  # the premise: B is still decoding when its twin arrives
    assert not repeat["cache_hit"]
    assert pd.notna(repeat["replica"])
    assert repeat["finish_s"] - repeat["arrival_s"] > 0.1
    assert r.loc["B repeat", "cache_hit"]  # once B (or its twin) finished, the response is there


@pytest.mark.parametrize(
    "response_cache",
    [None, {"type": "none"}, {"type": "tiered", "params": {"enabled": False}}],
    ids=["no-section", "type-none", "disabled"],
)
def test_without_a_response_cache_nothing_hits(tmp_path: Path, response_cache: dict[str, Any] | None) -> None:
    res = run(tmp_path, response_cache)
    r = res.requests
    assert not r["cache_hit"].any()
    assert r["replica"].notna().all()
    assert (r["status"] == "ok").all()
    assert res.summary["response_cache_hit_rate"] == 0.0
    assert_conserved(res)


def test_cached_responses_expire_after_the_ttl(tmp_path: Path) -> None:
    # every repeat comes at least 8 s after its original finished
    res = run(tmp_path, {"type": "tiered", "params": {"ttl_s": 5.0}})
    assert not res.requests["cache_hit"].any()
    assert res.summary["response_cache_hit_rate"] == 0.0
    assert_conserved(res)


def test_a_shared_tier_hit_costs_both_lookups(tmp_path: Path) -> None:
    # A one-entry local tier holds only the latest stored response: B's repeat finds B locally, but by the time
    # A comes back C has pushed A out of the local tier, so A is served from the shared tier (5 + 10 ms).
    res = run(tmp_path, {"type": "tiered", "params": {"local_max_entries": 1, "shared": True}})
    r = labelled(res)
    assert set(r.index[r["cache_hit"]]) == EXPECTED_HITS
    latency = r["finish_s"] - r["arrival_s"]
    assert latency["A repeat"] == pytest.approx(LOCAL_S, abs=1e-9)
    assert latency["B repeat"] == pytest.approx(LOCAL_S, abs=1e-9)
    assert latency["A repeat later"] == pytest.approx(LOCAL_S + SHARED_S, abs=1e-9)
    assert_conserved(res)


def test_without_a_shared_tier_an_evicted_response_misses(tmp_path: Path) -> None:
    res = run(tmp_path, {"type": "tiered", "params": {"local_max_entries": 1, "shared": False}})
    r = labelled(res)
    assert set(r.index[r["cache_hit"]]) == {"A repeat", "B repeat"}
    assert pd.notna(r.loc["A repeat later", "replica"])
    assert_conserved(res)
