"""compare's replicates: trace windows (batch means) vary the workload, seeds on a trace say they measure tie-breaks.

A short stretch of the Azure 2023 code trace (trace seconds 180-300: 719 requests) on two llama3.1-8b replicas,
so a three-replicate comparison takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from odhsim.analysis import Comparison, comparison_table, parse_variants, run_comparison, variant_scenario
from odhsim.analysis.compare import METRICS
from odhsim.analysis.replicates import TIE_BREAKING_ONLY, seed_replicates, window_plan
from odhsim.errors import ScenarioError
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from odhsim.workload.windows import TraceSpan, plan_windows
from tests.conftest import REPO_ROOT

TRACE = REPO_ROOT / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"
SHORT = ["duration_s=60", "workload.sources[0].duration_s=60"]
VARIANTS = ["rr=round-robin", "lr=least-request"]
SCENARIO = """\
name: code_trace
seed: 3
gpu_pool:
  - {{gpu: A100-80GB, count: 4, gpus_per_node: 4}}
models:
  - {{name: chat, profile: llama3.1-8b, gpu: A100-80GB, replicas: 2}}
gateway:
  router: {{profile: llm-d-default}}
workload:
  sources:
    - kind: trace
      path: {trace}
      window: [{start}, {end}]
"""


def _scenario(folder: Path, start: float = 180, end: float = 300) -> Path:
    path = folder / f"trace_{start:g}_{end:g}.yaml"
    path.write_text(SCENARIO.format(trace=TRACE, start=start, end=end))
    return path


def _trace_seconds() -> np.ndarray:
    """The trace's arrival times as the loader gives them (seconds since its first request), read independently."""
    stamps = pd.to_datetime(pd.read_csv(TRACE)["TIMESTAMP"])
    return (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    folder = tmp_path_factory.mktemp("replicates")
    return run_comparison(
        _scenario(folder), parse_variants(VARIANTS), seeds=3, keep_results=True, out_dir=folder / "out"
    )


def test_auto_picks_windows_for_a_trace_and_says_so(windows: Comparison) -> None:
    reps = windows.replicates
    assert reps is not None and reps.mode == "windows" and reps.seeds == (3, 4, 5)
    assert reps.window_s == 40.0  # the source's 120 s window in N=3 consecutive pieces
    assert [w["workload.sources[0]"] for w in reps.windows] == [(180.0, 220.0), (220.0, 260.0), (260.0, 300.0)]
    assert reps.description.startswith("windows: 3 replicates (seeds 3, 4, 5)")
    assert "N=3" in reps.description and "W=40 s" in reps.description and "batch means" in reps.description
    assert "variation between windows" in reps.description
    assert reps.warning is None


def test_each_replicate_replays_its_own_trace_window(windows: Comparison) -> None:
    t = _trace_seconds()
    expected = [int(((t >= a) & (t < a + 40)).sum()) for a in (180, 220, 260)]
    assert expected == [253, 278, 187]  # three different stretches of traffic
    assert list(windows.replicates.arrivals) == expected
    for seed, n, start in zip(windows.seeds, expected, (180, 220, 260), strict=True):
        req = windows.results[("rr", seed)].requests
        assert len(req) == n
        arrivals = np.sort(req["arrival_s"].to_numpy())
        trace = t[(t >= start) & (t < start + 40)] - start  # rebased: the window starts at 0
        np.testing.assert_allclose(arrivals, trace, atol=1e-6)
        assert windows.results[("rr", seed)].summary["requests"] == n


def test_replicates_differ_so_the_interval_has_spread(windows: Comparison) -> None:
    runs = windows.runs.set_index(["metric", "variant", "seed"])["value"]
    for metric in ("ttft_p50_s", "throughput_rps"):
        per_replicate = np.array([runs[metric, "rr", s] for s in windows.seeds])
        assert np.isfinite(per_replicate).all() and per_replicate.std(ddof=1) > 0, metric
    row = windows.table[(windows.table["metric"] == "ttft_p50_s") & (windows.table["variant"] == "lr")].iloc[0]
    assert row["n_seeds"] == 3 and row["ci_high"] - row["ci_low"] > 0


def test_every_variant_sees_the_same_arrivals_in_a_replicate(windows: Comparison) -> None:
    for seed in windows.seeds:
        rr, lr = (windows.results[(v, seed)].requests for v in ("rr", "lr"))
        np.testing.assert_array_equal(rr["arrival_s"].to_numpy(), lr["arrival_s"].to_numpy())
        np.testing.assert_array_equal(rr["prompt_tokens"].to_numpy(), lr["prompt_tokens"].to_numpy())
    routed = [windows.results[(v, 3)].requests["replica"].astype(str).tolist() for v in ("rr", "lr")]
    assert routed[0] != routed[1]  # the policies do differ


def test_outputs_say_what_the_interval_measures(windows: Comparison) -> None:
    out = windows.out_dir
    assert out is not None
    csv = pd.read_csv(out / "comparison.csv")
    assert (csv["replicates"] == windows.replicates.description).all() and len(csv) == 2 * len(METRICS)
    saved = json.loads((out / "replicates.json").read_text())
    assert saved["mode"] == "windows" and saved["n"] == 3 and saved["window_s"] == 40.0
    assert saved["windows"][2] == {"workload.sources[0]": [260.0, 300.0]} and saved["arrivals"] == [253, 278, 187]
    console = Console(width=200, record=True)
    console.print(comparison_table(windows))
    text = " ".join(console.export_text().split())  # the caption wraps
    assert "baseline: rr; 3 replicates (seeds 3, 4, 5; 40 s trace windows)" in text
    assert "over replicates (each a seed and its own 40 s trace window)" in text


def test_forcing_seeds_on_a_trace_warns_tie_breaking_only(tmp_path: Path) -> None:
    c = run_comparison(
        _scenario(tmp_path, 180, 220), parse_variants(VARIANTS), seeds=2, replicates="seeds", keep_results=True
    )
    reps = c.replicates
    assert reps is not None and reps.mode == "seeds" and reps.windows == () and reps.window_s is None
    assert reps.warning is not None and reps.warning.startswith(TIE_BREAKING_ONLY)
    assert TIE_BREAKING_ONLY == "intervals measure tie-breaking only: every replicate replays the same trace arrivals"
    assert "tie-breaking only" in reps.description
    a, b = (c.results[("rr", s)].requests["arrival_s"].to_numpy() for s in c.seeds)
    np.testing.assert_array_equal(a, b)  # what the warning is about: both seeds replay the same 253 arrivals
    assert len(a) == 253


def test_seeds_on_a_jittered_trace_name_what_the_seeds_redraw(tmp_path: Path) -> None:
    base = load_scenario(_scenario(tmp_path), ["workload.sources[0].jitter_s=3"])
    reps = seed_replicates(base, [1, 2])
    assert reps.warning is not None and "jitter of workload.sources[0]" in reps.warning
    assert "every replicate replays the same trace arrivals" in reps.warning
    assert seed_replicates(base, [1]).warning is None  # one replicate: no interval to misread


def test_generator_scenarios_keep_seed_replicates_and_their_numbers() -> None:
    variants = parse_variants(VARIANTS)
    c = run_comparison(DEFAULT, variants, seeds=[42], overrides=SHORT)
    reps = c.replicates
    assert reps is not None and reps.mode == "seeds" and reps.warning is None
    assert "workload + policy randomness" in reps.description
    # Exactly the runs compare made before replicates existed: each variant's scenario simulated on the seed.
    runs = c.runs.set_index(["variant", "metric"])["value"]
    for v in variants:
        summary = simulate(variant_scenario(DEFAULT, SHORT, v), seed=42).summary
        for m in ("ttft_p99_s", "e2e_p50_s", "goodput_rps", "cost_usd"):
            assert runs[v.name, m] == float(summary[m]), (v.name, m)


def test_plan_windows_defaults_and_scaling() -> None:
    span = TraceSpan(index=0, start_s=100.0, end_s=400.0, scale=0.5, offset_s=10.0)
    plan = plan_windows([span], 3, None, None)
    assert plan.window_s == 100.0 and plan.window(span, 2) == (300.0, 400.0)
    assert plan.sim_length_s == 10.0 + 100.0 * 0.5  # start_s, then the window at twice the rate
    # With a duration, a window is as long as one run replays (here (40 - 10) / 0.5 = 60 trace seconds).
    assert plan_windows([span], 3, None, 40.0).window_s == 60.0
    assert plan_windows([span], 3, 75.0, None).window(span, 1) == (175.0, 250.0)


def test_window_errors(tmp_path: Path) -> None:
    scenario, variants = _scenario(tmp_path), parse_variants(VARIANTS)
    with pytest.raises(ScenarioError, match=r"workload.sources\[0\] has 120 s.*at most 24"):
        run_comparison(scenario, variants, seeds=5, window_s=30)
    with pytest.raises(ScenarioError, match="needs a trace source"):
        run_comparison(DEFAULT, variants, seeds=2, overrides=SHORT, replicates="windows")
    with pytest.raises(ScenarioError, match="--window-s applies to --replicates windows"):
        run_comparison(scenario, variants, seeds=2, replicates="seeds", window_s=10)
    with pytest.raises(ScenarioError, match="must be one of auto, seeds, windows"):
        run_comparison(scenario, variants, seeds=2, replicates="batches")
    with pytest.raises(ScenarioError, match="must be positive"):
        run_comparison(scenario, variants, seeds=2, window_s=0)


def test_empty_windows_are_reported(tmp_path: Path) -> None:
    base = load_scenario(_scenario(tmp_path, 0, 160))  # the trace is quiet from 39 s to 172 s
    _, reps = window_plan(base, [1, 2, 3, 4], None)
    assert reps.arrivals == (63, 0, 0, 0)
    assert reps.warning is not None and reps.warning.startswith("replicate windows 1, 2, 3 of 40 s hold no trace")
