"""Policy A/B on the Mooncake conversation trace: round robin vs least-request vs llm-d's default profile.

Runs `scenarios/mooncake_prefix.yaml` (6 x llama3.1-8b / H100 with a host-memory prefix tier) on 3 common seeds,
as `notebooks/policy_ab.ipynb` does. Skipped when the shared copy of the trace is absent.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from odhsim.analysis import Comparison, parse_variants, run_comparison
from tests.conftest import REPO_ROOT, shared_file

SCENARIO = REPO_ROOT / "scenarios" / "mooncake_prefix.yaml"
VARIANTS = ("rr=round-robin", "lr=least-request", "llmd=llm-d-default")
SEEDS = 3


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    shared_file("traces", "mooncake", "conversation_trace.jsonl")
    return run_comparison(SCENARIO, parse_variants(VARIANTS), seeds=SEEDS, keep_results=True)


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


def test_llmd_ttft_p50_vs_round_robin(comparison: Comparison) -> None:
    # The expected sign is under investigation. When this test was written, llm-d's profile reached a ~3x higher
    # prefix-cache hit rate than round robin and yet a HIGHER TTFT p50 (+0.18 s, significant): its requests
    # waited longer before admission on the replica their prefix pointed to. The lead decides after the LLM
    # replica change whether that is the model or a bug; until then this test only reports the difference
    # (run with -s to see it) and must not assert its sign.
    r = row(comparison, "ttft_p50_s", "llmd")
    base = row(comparison, "ttft_p50_s", "rr")
    print(
        f"\nTTFT p50: rr {base['value']:.3f} s, llmd {r['value']:.3f} s, llmd - rr {r['diff']:+.3f} s "
        f"[95% CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p = {r['p_value']:.2g}, "
        f"significant: {bool(r['significant'])}"
    )
    assert math.isfinite(r["diff"])
    assert np.isfinite([r["value"], base["value"]]).all()
