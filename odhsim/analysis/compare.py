"""Run variants of a scenario on common replicates and compare each against the first (the baseline).

Every variant runs on the same replicates (a seed, and for a trace workload a window of the trace: see
`odhsim.analysis.replicates`), and the engine draws arrivals and token lengths from per-component random streams,
so a replicate gives every variant the same traffic. The natural test is then paired: per replicate, variant minus
baseline, which cancels the (large) replicate-to-replicate variation of the workload itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odhsim.analysis.replicates import Replicates, resolve_mode, seed_replicates, window_plan, windowed_scenario
from odhsim.analysis.stats import CONFIDENCE, PairedStats, finite, mean_ci, paired_stats
from odhsim.analysis.variants import Variant, variant_scenario
from odhsim.errors import OdhsimError, ScenarioError
from odhsim.experiments.executors import Executor, InlineExecutor
from odhsim.experiments.jobs import Job, JobOutput, run_job
from odhsim.results.run_result import RunResult
from odhsim.scenario.load import load_scenario

PRIMARY_METRICS = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "goodput_rps", "slo_attainment", "cost_usd")
EXTRA_METRICS = ("throughput_rps", "prefix_cache_hit_rate", "availability", "retry_amplification")
METRICS = PRIMARY_METRICS + EXTRA_METRICS
REGRET_METRICS = ("regret_mean_s", "regret_p90_s", "regret_share_positive")
"""Counterfactual routing regret (odhsim.explain.regret): compared when the runs recorded decisions."""
TABLE_COLUMNS = ("metric", "variant", "value", "diff", "ci_low", "ci_high", "p_value")
ALPHA = 0.05

__all__ = [
    "CONFIDENCE",
    "METRICS",
    "Comparison",
    "PairedStats",
    "Replicates",
    "mean_ci",
    "paired_stats",
    "run_comparison",
]

CompareProgress = Callable[[str, int, int, int], None]
"""progress(variant, seed, runs_done, runs_total), called after each run finishes."""


@dataclass(eq=False)
class Comparison:
    """The outcome: `runs` (tidy: variant, seed, metric, value), `table` (one row per metric x variant)."""

    baseline: str
    variants: list[str]
    seeds: list[int]
    runs: pd.DataFrame
    table: pd.DataFrame
    results: dict[tuple[str, int], RunResult] = field(default_factory=dict)
    """(variant, seed) -> RunResult; filled when results were written (out_dir) or kept (keep_results)."""
    out_dir: Path | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)
    """variant -> its runs' distinct run-level warnings (summary["warnings"], models that could not serve)."""
    replicates: Replicates | None = None
    """What replicate i is (seed, trace windows) and what the intervals measure; its `warning` is for the user."""


def _seed_list(base_seed: int, seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ScenarioError(f"--seeds must be at least 1, got {seeds}")
        out = [base_seed + i for i in range(seeds)]
    else:
        out = [int(s) for s in seeds]
    if not out:
        raise ScenarioError("give at least one seed")
    if min(out) < 0:
        raise ScenarioError(f"seeds must be non-negative integers, got {min(out)}")
    if len(set(out)) != len(out):
        raise ScenarioError(f"seeds must be distinct, got {out}")
    return out


def comparison_frame(runs: pd.DataFrame, variants: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """The statistics table from tidy runs: per metric and variant, mean value and paired stats vs variants[0]."""
    values = {key: float(v) for key, v in runs.set_index(["metric", "variant", "seed"])["value"].items()}
    baseline = variants[0]
    rows = []
    for metric in dict.fromkeys(runs["metric"]):
        per_seed = {n: np.array([values.get((metric, n, s), math.nan) for s in seeds]) for n in variants}
        base = per_seed[baseline]
        for name in variants:
            vals = per_seed[name]
            value = float(finite(vals).mean()) if np.isfinite(vals).any() else math.nan
            if name == baseline:
                s = PairedStats(0.0, 0.0, 0.0, math.nan, int(np.isfinite(base).sum()))
            else:
                s = paired_stats(base, vals)
            rows.append(
                {
                    "metric": metric,
                    "variant": name,
                    "value": value,
                    "diff": s.diff,
                    "ci_low": s.ci_low,
                    "ci_high": s.ci_high,
                    "p_value": s.p_value,
                    "significant": bool(s.p_value < ALPHA),
                    "n_seeds": s.n,
                }
            )
    return pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "significant", "n_seeds"])


def run_comparison(
    scenario_path: str | Path,
    variants: Sequence[Variant],
    *,
    seeds: int | Sequence[int] = 5,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    progress: CompareProgress | None = None,
    keep_results: bool = False,
    executor: Executor | None = None,
    replicates: str = "auto",
    window_s: float | None = None,
) -> Comparison:
    """Run every variant on every replicate and compare against variants[0].

    Replicate i runs seed i (int n: the scenario's seed + 0..n-1). `replicates`: `seeds` replays the scenario as it
    is; `windows` also gives replicate i its own `window_s`-second window of every trace source (default: the
    length one run replays, or the trace / n if shorter); `auto`: windows when a source is a trace, else seeds.
    All scenarios are built before anything runs, so a bad variant or window fails fast. The runs go through
    `executor` (default: one after another in this process); results do not depend on which. With `out_dir`, each
    run goes to `out_dir/<variant>/seed<seed>/`, plus comparison.csv, runs.csv, replicates.json and comparison.png.
    """
    if not variants:
        raise ScenarioError("give at least one variant; the first is the baseline")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ScenarioError(f"variant names must be unique, got {names}")
    base = load_scenario(scenario_path, overrides)
    seed_list = _seed_list(base.seed, seeds)
    scenarios = {v.name: variant_scenario(scenario_path, overrides, v) for v in variants}
    mode = resolve_mode(base, replicates)
    if mode == "windows":
        plan, described = window_plan(base, seed_list, window_s)
        jobs = [
            Job(windowed_scenario(sc, plan, i, f"{scenario_path} [{name}]"), seed, label=name)
            for i, seed in enumerate(seed_list)
            for name, sc in scenarios.items()
        ]
    else:
        if window_s is not None:
            raise ScenarioError("--window-s applies to --replicates windows (or auto with a trace workload)")
        described = seed_replicates(base, seed_list)
        jobs = [Job(sc, seed, label=name) for seed in seed_list for name, sc in scenarios.items()]
    out = Path(out_dir) if out_dir is not None else None
    keep = keep_results or out is not None
    results: dict[tuple[str, int], RunResult] = {}
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    total = len(jobs)
    for done, outcome in enumerate((executor or InlineExecutor()).map(jobs, partial(run_job, keep_result=keep)), 1):
        name, seed = outcome.job.label, outcome.job.seed
        if not outcome.ok:
            raise OdhsimError(f"variant {name!r} seed {seed} failed: {outcome.error}")
        output: JobOutput = outcome.result
        summaries[(name, seed)] = output.summary
        if output.result is not None:
            if out is not None:
                output.result.write(out / name / f"seed{seed}")
            results[(name, seed)] = output.result
        if progress is not None:
            progress(name, seed, done, total)
    metrics = METRICS + tuple(m for m in REGRET_METRICS if any(m in s for s in summaries.values()))
    records = {
        name: [
            {"variant": name, "seed": seed, "metric": m, "value": _as_float(summaries[(name, seed)].get(m))}
            for seed in seed_list
            for m in metrics
        ]
        for name in names
    }
    found_warnings: dict[str, list[str]] = {}
    for seed in seed_list:
        for name in names:
            _add_warnings(found_warnings.setdefault(name, []), summaries[(name, seed)])
    results = {key: results[key] for key in sorted(results, key=lambda k: (seed_list.index(k[1]), names.index(k[0])))}
    # Variant-major rows (baseline first), seeds in the order given.
    runs = pd.DataFrame([r for name in names for r in records[name]], columns=["variant", "seed", "metric", "value"])
    table = comparison_frame(runs, names, seed_list)
    comparison = Comparison(
        names[0],
        names,
        seed_list,
        runs,
        table,
        results,
        out,
        {k: v for k, v in found_warnings.items() if v},
        described,
    )
    if out is not None:
        write_comparison(comparison, out)
    return comparison


def _add_warnings(found: list[str], summary: dict[str, Any]) -> None:
    """Append a run's warnings and unserved models to its variant's list, each text once."""
    unserved = summary.get("unserved_models") or {}
    texts = [*summary.get("warnings", []), *(f"model {m} could not serve: {w}" for m, w in unserved.items())]
    found.extend(t for t in dict.fromkeys(texts) if t not in found)


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def write_comparison(comparison: Comparison, out_dir: str | Path) -> Path:
    """comparison.csv (the seven statistics columns first, then what the interval measures), runs.csv,
    replicates.json (mode, seeds, windows, description, warning) and comparison.png into `out_dir`."""
    from odhsim.analysis.plot import plot_comparison  # matplotlib: only when a comparison is written

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison.table
    if comparison.replicates is not None:
        table = table.assign(replicates=comparison.replicates.description)
        (out / "replicates.json").write_text(json.dumps(comparison.replicates.to_json(), indent=2) + "\n")
    table.to_csv(out / "comparison.csv", index=False)
    comparison.runs.to_csv(out / "runs.csv", index=False)
    plot_comparison(comparison, out / "comparison.png")
    return out
