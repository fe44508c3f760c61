"""odhsim.analysis: paired statistics, variant specs, and a real comparison on a short default scenario."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy import stats

from odhsim.analysis import (
    METRICS,
    Comparison,
    Variant,
    comparison_table,
    mean_ci,
    paired_stats,
    parse_variant,
    parse_variants,
    run_comparison,
    variant_scenario,
)
from odhsim.analysis.compare import TABLE_COLUMNS, comparison_frame
from odhsim.analysis.report import fmt_diff
from odhsim.errors import ScenarioError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"
SHORT = ["duration_s=60", "workload.sources[0].duration_s=60"]


# --- paired statistics --------------------------------------------------------------------------------------------


def test_paired_stats_closed_form() -> None:
    base = np.array([10.0, 20.0, 30.0])
    other = base + np.array([1.0, 2.0, 3.0])  # diffs 1, 2, 3: mean 2, sd 1
    s = paired_stats(base, other)
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert s.n == 3
    assert s.diff == pytest.approx(2.0)
    assert s.ci_low == pytest.approx(2.0 - half)
    assert s.ci_high == pytest.approx(2.0 + half)
    assert half == pytest.approx(2.4841377, rel=1e-6)  # t(0.975, 2) = 4.302653 over sqrt(3)
    t_stat = 2.0 / (1.0 / math.sqrt(3))
    assert s.p_value == pytest.approx(2 * stats.t.sf(t_stat, 2))
    assert s.p_value == pytest.approx(stats.ttest_rel(other, base).pvalue)
    assert s.p_value == pytest.approx(0.0741799, rel=1e-5)


def test_paired_stats_sign_and_significance() -> None:
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    other = [0.5, 1.6, 2.4, 3.5, 4.45]  # consistently lower
    s = paired_stats(base, other)
    assert s.diff == pytest.approx(-0.51)
    assert s.ci_high < 0 and s.p_value < 0.05


def test_paired_stats_zero_variance_and_small_n() -> None:
    same = paired_stats([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_stats([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert shifted.diff == pytest.approx(0.5)
    assert shifted.ci_low == shifted.ci_high == shifted.diff
    assert shifted.p_value == 0.0
    one = paired_stats([1.0], [3.0])
    assert one.diff == 2.0 and one.n == 1
    assert math.isnan(one.ci_low) and math.isnan(one.ci_high) and math.isnan(one.p_value)
    # A NaN on either side drops that seed's pair.
    nan = paired_stats([1.0, float("nan"), 3.0, 4.0], [2.0, 5.0, 5.0, 7.0])
    assert nan.n == 3 and nan.diff == pytest.approx(2.0)


def test_mean_ci() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert mean_ci([4.0])[0] == 4.0 and math.isnan(mean_ci([4.0])[1])


def _runs(values: dict[str, list[float]], seeds: list[int], metric: str = "ttft_p50_s") -> pd.DataFrame:
    rows = [
        {"variant": v, "seed": s, "metric": metric, "value": x}
        for v, xs in values.items()
        for s, x in zip(seeds, xs, strict=True)
    ]
    return pd.DataFrame(rows)


def test_comparison_frame_baseline_row_and_columns() -> None:
    seeds = [7, 8, 9]
    runs = _runs({"a": [10.0, 20.0, 30.0], "b": [11.0, 22.0, 33.0]}, seeds)
    table = comparison_frame(runs, ["a", "b"], seeds)
    assert list(table.columns[:7]) == list(TABLE_COLUMNS)
    base, b = table.iloc[0], table.iloc[1]
    assert base["variant"] == "a" and base["value"] == 20.0
    assert (base["diff"], base["ci_low"], base["ci_high"]) == (0.0, 0.0, 0.0)
    assert math.isnan(base["p_value"]) and not base["significant"]
    assert b["value"] == 22.0 and b["diff"] == pytest.approx(2.0) and b["n_seeds"] == 3
    assert b["p_value"] == pytest.approx(stats.ttest_rel([11.0, 22.0, 33.0], [10.0, 20.0, 30.0]).pvalue)


def test_comparison_frame_pairs_by_seed_not_row_order() -> None:
    seeds = [1, 2, 3]
    # b's rows come in seed order 3, 1, 2: per seed b is 11, 12, 13, so every paired difference is exactly 10.
    runs = pd.concat([_runs({"a": [1.0, 2.0, 3.0]}, seeds), _runs({"b": [13.0, 11.0, 12.0]}, [3, 1, 2])])
    table = comparison_frame(runs, ["a", "b"], seeds)
    row = table[table["variant"] == "b"].iloc[0]
    assert row["value"] == 12.0 and row["diff"] == 10.0
    assert row["ci_low"] == row["ci_high"] == 10.0 and row["p_value"] == 0.0 and row["significant"]


def test_fmt_diff() -> None:
    assert fmt_diff(-0.12, -0.2, -0.04, True) == "\u22120.12 [\u22120.2, \u22120.04] *"
    assert fmt_diff(0.5, float("nan"), float("nan"), False) == "+0.5"


# --- variant specs ------------------------------------------------------------------------------------------------


def test_parse_variant_profile() -> None:
    v = parse_variant("rr=round-robin")
    assert v == Variant("rr", {"router": {"profile": "round-robin"}})


def test_parse_variant_file_with_and_without_gateway_key(tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("gateway:\n  router: {profile: least-request}\n", encoding="utf-8")
    bare = tmp_path / "bare.yaml"
    bare.write_text("max_in_flight_per_replica: 2\nrouter: {profile: random}\n", encoding="utf-8")
    assert parse_variant(f"w={wrapped}").gateway_overrides == {"router": {"profile": "least-request"}}
    assert parse_variant(f"b={bare}").gateway_overrides == {
        "max_in_flight_per_replica": 2,
        "router": {"profile": "random"},
    }


def test_variant_file_merges_over_scenario_gateway(tmp_path: Path) -> None:
    only_router = tmp_path / "router.yaml"
    only_router.write_text("router: {profile: power-of-two}\n", encoding="utf-8")
    sc = variant_scenario(DEFAULT, ["gateway.max_in_flight_per_replica=3"], parse_variant(f"p2={only_router}"))
    assert sc.gateway.router.profile == "power-of-two"
    assert sc.gateway.max_in_flight_per_replica == 3  # the scenario's dispatch limit is kept
    assert sc.gateway.scrape_interval_s == 0.05
    assert sc.name == "default[p2]"
    queue = tmp_path / "queue.yaml"
    queue.write_text("gateway: {flow_control: {queue: wfq-class}}\n", encoding="utf-8")
    sc = variant_scenario(DEFAULT, None, parse_variant(f"q={queue}"))
    assert sc.gateway.flow_control is not None and sc.gateway.flow_control.queue.type == "wfq-class"
    assert sc.gateway.router.profile == "llm-d-default"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("round-robin", "expected NAME=PROFILE"),
        ("=round-robin", "name before '=' is empty"),
        ("a/b=round-robin", "'a/b'"),
        ("x=", "nothing after '='"),
        ("x=no-such-profile", "known profiles: "),
    ],
)
def test_parse_variant_errors(spec: str, needle: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_variant(spec)
    assert needle in str(info.value)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_variant("fast=no-such-profile")
    msg = str(info.value)
    assert "variant 'fast'" in msg and "'no-such-profile'" in msg
    assert "round-robin" in msg and "llm-d-default" in msg


def test_duplicate_variant_names() -> None:
    with pytest.raises(ScenarioError, match="'a' is given twice"):
        parse_variants(["a=round-robin", "b=random", "a=least-request"])
    with pytest.raises(ScenarioError, match="at least one variant"):
        parse_variants([])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("router: [unclosed\n", "invalid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("router: {profile: nope}\n", "unknown router profile 'nope'"),
        ("gateway:\n  bogus: 1\n", "line 2: bogus: unknown field 'bogus'"),
        ("gateway: {router: {profile: random}}\nmodels: []\n", "only change the gateway section; remove models"),
        ("gateway: 3\n", "`gateway` must be a non-empty mapping"),
        ("max_in_flight_per_replica: 0\n", "max_in_flight_per_replica"),
    ],
)
def test_variant_file_errors_name_variant_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        parse_variant(f"mine={path}")
    msg = str(info.value)
    assert "variant 'mine'" in msg and str(path) in msg
    assert needle in msg


def test_missing_variant_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ScenarioError, match="no such file") as info:
        parse_variant(f"gone={path}")
    assert "variant 'gone'" in str(info.value) and str(path) in str(info.value)


def test_variant_scenario_error_names_variant(tmp_path: Path) -> None:
    v = Variant("big", {"router": {"profile": "random"}})
    with pytest.raises(ScenarioError) as info:
        variant_scenario(DEFAULT, ["models[0].replicas=99"], v)
    assert str(info.value).startswith("variant 'big': ") and "gpu_pool has 8" in str(info.value)


# --- a real comparison --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    variants = parse_variants(["rr=round-robin", "llmd=llm-d-default", "rand=random"])
    out = tmp_path_factory.mktemp("compare")
    calls: list[tuple[str, int, int, int]] = []
    result = run_comparison(
        DEFAULT, variants, seeds=3, overrides=SHORT, out_dir=out, progress=lambda *a: calls.append(a)
    )
    assert calls[-1][2:] == (9, 9) and len(calls) == 9
    return result


def test_comparison_shape_and_seeds(comparison: Comparison) -> None:
    assert comparison.baseline == "rr" and comparison.variants == ["rr", "llmd", "rand"]
    assert comparison.seeds == [42, 43, 44]  # the scenario's seed + 0, 1, 2
    table = comparison.table
    assert len(table) == len(METRICS) * 3
    assert set(zip(table["metric"], table["variant"], strict=True)) == {
        (m, v) for m in METRICS for v in comparison.variants
    }
    assert list(comparison.runs.columns) == ["variant", "seed", "metric", "value"]
    assert len(comparison.runs) == 3 * 3 * len(METRICS)
    assert (table["n_seeds"] == 3).all()
    base = table[table["variant"] == "rr"]
    assert (base["diff"] == 0).all() and base["p_value"].isna().all()
    # value is the mean over seeds of the tidy runs; diff is the mean paired difference.
    runs = comparison.runs.set_index(["metric", "variant", "seed"])["value"]
    row = table[(table["metric"] == "ttft_p99_s") & (table["variant"] == "rand")].iloc[0]
    rand = np.array([runs["ttft_p99_s", "rand", s] for s in comparison.seeds])
    rr = np.array([runs["ttft_p99_s", "rr", s] for s in comparison.seeds])
    assert row["value"] == pytest.approx(rand.mean())
    assert row["diff"] == pytest.approx((rand - rr).mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(rand, rr).pvalue)


def test_common_random_numbers(comparison: Comparison) -> None:
    for seed in comparison.seeds:
        arrivals = [comparison.results[(v, seed)].requests["arrival_s"].to_numpy() for v in comparison.variants]
        prompts = [comparison.results[(v, seed)].requests["prompt_tokens"].to_numpy() for v in comparison.variants]
        assert len(arrivals[0]) > 100
        for a, p in zip(arrivals[1:], prompts[1:], strict=True):
            np.testing.assert_array_equal(a, arrivals[0])
            np.testing.assert_array_equal(p, prompts[0])
    # Different seeds do give different traffic.
    a42 = comparison.results[("rr", 42)].requests["arrival_s"].to_numpy()
    a43 = comparison.results[("rr", 43)].requests["arrival_s"].to_numpy()
    assert len(a42) != len(a43) or not np.array_equal(a42, a43)
    # Routing does differ between variants (else the comparison would be vacuous).
    replicas = [comparison.results[(v, 42)].requests["replica"].astype(str).tolist() for v in comparison.variants]
    assert replicas[0] != replicas[2]


def test_comparison_files(comparison: Comparison) -> None:
    out = comparison.out_dir
    assert out is not None
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv.columns[:7]) == ["metric", "variant", "value", "diff", "ci_low", "ci_high", "p_value"]
    assert len(csv) == len(METRICS) * 3
    pd.testing.assert_frame_equal(csv[list(TABLE_COLUMNS)], comparison.table[list(TABLE_COLUMNS)], check_dtype=False)
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns) == ["variant", "seed", "metric", "value"] and len(runs) == len(comparison.runs)
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for v in comparison.variants:
        for s in comparison.seeds:
            run_dir = out / v / f"seed{s}"
            assert (run_dir / "summary.json").is_file() and (run_dir / "requests.parquet").is_file()


def test_comparison_is_deterministic(comparison: Comparison) -> None:
    variants = parse_variants(["rr=round-robin", "llmd=llm-d-default", "rand=random"])
    again = run_comparison(DEFAULT, variants, seeds=3, overrides=SHORT)
    assert again.results == {}  # nothing kept without out_dir or keep_results
    pd.testing.assert_frame_equal(again.table, comparison.table)
    pd.testing.assert_frame_equal(again.runs, comparison.runs)


def test_comparison_table_renders(comparison: Comparison) -> None:
    console = Console(width=200, record=True)
    console.print(comparison_table(comparison))
    text = console.export_text()
    assert "baseline: rr; 3 seeds (42, 43, 44)" in text
    assert all(m in text for m in METRICS)
    assert "Δ llmd" in text and "Δ rand" in text and "Δ rr" not in text


def test_single_seed_and_explicit_seeds() -> None:
    variants = parse_variants(["rr=round-robin", "rand=random"])
    one = run_comparison(DEFAULT, variants, seeds=[7], overrides=SHORT, keep_results=True)
    assert one.seeds == [7] and set(one.results) == {("rr", 7), ("rand", 7)}
    row = one.table[(one.table["variant"] == "rand") & (one.table["metric"] == "ttft_p50_s")].iloc[0]
    assert math.isnan(row["ci_low"]) and math.isnan(row["p_value"]) and not row["significant"]
    assert row["n_seeds"] == 1
    with pytest.raises(ScenarioError, match="distinct"):
        run_comparison(DEFAULT, variants, seeds=[1, 1], overrides=SHORT)
    with pytest.raises(ScenarioError, match="at least 1"):
        run_comparison(DEFAULT, variants, seeds=0, overrides=SHORT)
