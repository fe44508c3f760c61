"""Policy A/B on the Mooncake conversation trace: round robin vs least-request vs llm-d's default profile.

Runs `scenarios/mooncake_prefix.yaml` (6 x llama3.1-8b / H100 with a host-memory prefix tier) on 3 common seeds,
as `notebooks/policy_ab.ipynb` does, and round robin vs llm-d on the trace's raw (3-second-quantized) timestamps,
where llm-d's routing concentrates same-instant bursts. The trace is the repository's copy (traces/mooncake).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from odhsim.analysis import Comparison, parse_variants, run_comparison
from odhsim.analysis.diagnostics import burst_concentration
from tests.conftest import REPO_ROOT, data_file

SCENARIO = REPO_ROOT / "scenarios" / "mooncake_prefix.yaml"
VARIANTS = ("rr=round-robin", "lr=least-request", "llmd=llm-d-default")
SEEDS = 3


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    data_file("mooncake", "conversation_trace.jsonl")
    return run_comparison(SCENARIO, parse_variants(VARIANTS), seeds=SEEDS, replicates="seeds", keep_results=True)


def row(comparison: Comparison, metric: str, variant: str) -> pd.Series:
    t = comparison.table
    rows = t[(t["metric"] == metric) & (t["variant"] == variant)]
    assert len(rows) == 1, (metric, variant)
    return rows.iloc[0]


def test_every_variant_ran_on_every_seed(comparison: Comparison) -> None:
    assert comparison.baseline == "rr"
    assert comparison.variants == ["rr", "lr", "llmd"]
    assert len(comparison.seeds) == SEEDS
    assert set(comparison.results) == {(v, s) for v in comparison.variants for s in comparison.seeds}
    for result in comparison.results.values():
        s = result.summary
        assert s["requests"] == s["completed"] + s["shed"] + s["failed"] + s["timeout"] + s["in_flight_at_stop"]
        assert s["requests"] > 1000


def test_arrivals_are_identical_across_variants_for_a_seed(comparison: Comparison) -> None:
    cols = ["arrival_s", "prompt_tokens", "output_tokens", "priority", "model", "tenant"]
    for seed in comparison.seeds:
        base = comparison.results[("rr", seed)].requests.sort_values("request_id")[cols].reset_index(drop=True)
        for variant in comparison.variants[1:]:
            other = comparison.results[(variant, seed)].requests.sort_values("request_id")
            pd.testing.assert_frame_equal(other[cols].reset_index(drop=True), base, obj=f"{variant} seed {seed}")


def test_llmd_default_gets_a_higher_prefix_cache_hit_rate_than_round_robin(comparison: Comparison) -> None:
    r = row(comparison, "prefix_cache_hit_rate", "llmd")
    base = row(comparison, "prefix_cache_hit_rate", "rr")
    print(
        f"\nprefix-cache hit rate: rr {base['value']:.3f}, llmd {r['value']:.3f}, "
        f"diff {r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p = {r['p_value']:.2g}"
    )
    assert r["n_seeds"] == SEEDS
    assert r["diff"] >= 0.05  # at least 5 points of the prompt tokens
    assert r["p_value"] < 0.05
    assert r["significant"]
    assert r["ci_low"] > 0
    # per seed too, not only on average
    runs = comparison.runs[comparison.runs["metric"] == "prefix_cache_hit_rate"]
    per_seed = runs.pivot(index="seed", columns="variant", values="value")
    assert (per_seed["llmd"] > per_seed["rr"]).all()


def test_llmd_default_has_a_lower_ttft_p50_than_round_robin(comparison: Comparison) -> None:
    # With de-quantized arrivals (the scenario's jitter_s: 3), the prefix-cache hits shorten prefill and llm-d's
    # median TTFT is lower than round robin's, significantly.
    r = row(comparison, "ttft_p50_s", "llmd")
    base = row(comparison, "ttft_p50_s", "rr")
    print(
        f"\nTTFT p50: rr {base['value']:.3f} s, llmd {r['value']:.3f} s, llmd - rr {r['diff']:+.3f} s "
        f"[95% CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p = {r['p_value']:.2g}"
    )
    assert np.isfinite([r["value"], base["value"], r["diff"]]).all()
    assert r["n_seeds"] == SEEDS
    assert r["diff"] < 0
    assert r["p_value"] < 0.05
    assert r["significant"]
    assert r["ci_high"] < 0  # the whole 95% CI below zero


@pytest.fixture(scope="module")
def raw_comparison() -> Comparison:
    """rr vs llmd replaying the trace's raw timestamps, quantized to ~3 s: each instant is a burst."""
    data_file("mooncake", "conversation_trace.jsonl")
    variants = parse_variants([VARIANTS[0], VARIANTS[2]])
    return run_comparison(
        SCENARIO,
        variants,
        seeds=SEEDS,
        overrides=["workload.sources[0].jitter_s=0"],
        replicates="seeds",
        keep_results=True,
    )


def test_shipped_scenario_has_no_same_instant_arrivals(comparison: Comparison) -> None:
    for result in comparison.results.values():
        r = result.requests
        assert r["arrival_s"].nunique() == len(r)


def test_llmd_concentrates_same_instant_bursts_more_than_round_robin_on_raw_timestamps(
    raw_comparison: Comparison,
) -> None:
    assert raw_comparison.variants == ["rr", "llmd"]
    conc = {
        (v, s): burst_concentration(raw_comparison.results[(v, s)].requests)
        for v in raw_comparison.variants
        for s in raw_comparison.seeds
    }
    print("\nsame-instant burst concentration (raw timestamps):", {k: round(c, 3) for k, c in conc.items()})
    assert all(math.isfinite(c) for c in conc.values())  # the raw timestamps do put requests on shared instants
    for s in raw_comparison.seeds:
        assert conc[("llmd", s)] > conc[("rr", s)]
