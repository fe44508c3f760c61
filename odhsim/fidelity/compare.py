"""Compare a simulated run with a live one: the same metrics computed the same way from both result folders.

A result folder is what `odhsim run --out` or the fidelity loop writes: requests.parquet (required),
replicas.parquet (state transitions; optional, its times on the requests' clock) and summary.json. The table is
tidy: one row per metric (and model, for ready replicas), with the sim and live values, the signed error of the
simulator in percent of the live value, the absolute difference, the issue's target and whether it is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from odhsim.errors import OdhsimError
from odhsim.fidelity.series import ready_replicas, time_grid, waiting_for_first_token
from odhsim.fidelity.steps import step_metrics
from odhsim.results.status import STATUS_OK
from odhsim.results.summary import latency_columns

COLUMNS: Final = ["metric", "load", "sim", "live", "error_pct", "abs_diff", "target", "passed", "model"]
"""fidelity.csv's columns; `target` is a percentage for most metrics, replicas for ready_replicas."""
PCT_TARGETS: Final[dict[str, float]] = {
    "ttft_p50_s": 10.0,
    "ttft_p99_s": 10.0,
    "e2e_p50_s": 5.0,
    "e2e_p99_s": 10.0,
    "throughput_rps": 2.0,
}
"""Issue 11's targets: |sim - live| / live in percent."""
READY_TARGET_REPLICAS: Final = 1.0
"""Ready replicas over time: the largest |sim(t) - live(t)| may be one replica."""
DEFAULT_STEP_S: Final = 0.5


class FidelityError(OdhsimError):
    """Bad fidelity input (a missing result folder or table); the CLI prints it and exits 2."""


@dataclass(frozen=True, eq=False)
class RunTables:
    """The tables of one result folder the comparison reads."""

    label: str
    requests: pd.DataFrame
    replicas: pd.DataFrame
    steps: pd.DataFrame | None = None
    """steps.parquet (odhsim/results/steps.py) when the folder has one."""


@dataclass(frozen=True, eq=False)
class Series:
    """Both runs on one time grid: queue length (all requests) and ready replicas per model."""

    grid: np.ndarray
    queue_sim: np.ndarray
    queue_live: np.ndarray
    ready_sim: dict[str, np.ndarray]
    ready_live: dict[str, np.ndarray]
    arrivals_end_s: float
    """Ready replicas compare up to here (the last arrival both runs share): after it each engine's own way of
    ending (the simulator marks replicas stopped, serve drains them) says nothing about the system."""


def load_run(folder: str | Path, label: str) -> RunTables:
    """requests.parquet (required) and replicas.parquet (empty when absent) of a result folder."""
    path = Path(folder)
    req = path / "requests.parquet"
    if not req.is_file():
        raise FidelityError(f"--{label} {path}: no requests.parquet there (give a folder `odhsim run --out` or "
                            "`odhsim replay --out` wrote)")  # fmt: skip
    try:
        requests = pd.read_parquet(req)
        rep = path / "replicas.parquet"
        replicas = pd.read_parquet(rep) if rep.is_file() else pd.DataFrame()
        steps = pd.read_parquet(path / "steps.parquet") if (path / "steps.parquet").is_file() else None
    except Exception as err:  # a truncated or foreign file: name it
        raise FidelityError(f"--{label} {path}: cannot read its tables: {type(err).__name__}: {err}") from None
    missing = {"arrival_s", "first_token_s", "finish_s", "status", "output_tokens"} - set(requests.columns)
    if missing:
        raise FidelityError(f"--{label} {req}: missing column(s) {sorted(missing)}")
    if not replicas.empty and not {"time_s", "model", "replica", "state"} <= set(replicas.columns):
        replicas = pd.DataFrame()
    return RunTables(label, requests, replicas, steps)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def request_metrics(requests: pd.DataFrame) -> dict[str, float]:
    """Latency percentiles of ok requests, and ok throughput over the span from the first arrival to the last ok
    answer (both engines measured the same way, whatever their run's end)."""
    lat = latency_columns(requests)
    ttft, e2e = lat["ttft_s"].dropna().to_numpy(), lat["e2e_s"].dropna().to_numpy()
    ok = (requests["status"].astype(str) == STATUS_OK).to_numpy()
    span = (
        float(requests["finish_s"].to_numpy(dtype=float)[ok].max() - requests["arrival_s"].min())
        if ok.any()
        else math.nan
    )
    n_ok = int(ok.sum())
    return {
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "e2e_p50_s": _pct(e2e, 50),
        "e2e_p99_s": _pct(e2e, 99),
        "throughput_rps": n_ok / span if span and span > 0 else math.nan,
        "output_tokens_per_s": float(requests["output_tokens"].to_numpy()[ok].sum()) / span
        if span and span > 0
        else math.nan,
        "ok_fraction": n_ok / len(requests) if len(requests) else math.nan,
    }


def error_pct(sim: float, live: float) -> float:
    """The simulator's signed error in percent of the live value (0 when both are 0, NaN when live alone is)."""
    if math.isnan(sim) or math.isnan(live):
        return math.nan
    if live == 0:
        return 0.0 if sim == 0 else math.nan
    return 100.0 * (sim - live) / live


def series_of(sim: RunTables, live: RunTables, step_s: float = DEFAULT_STEP_S) -> Series:
    """Queue length and ready replicas of both runs, sampled every `step_s` from 0 to the later run's last answer."""
    ends = [t["finish_s"].max() for t in (sim.requests, live.requests) if len(t)]
    end = float(np.nanmax(ends)) if ends else 0.0
    grid = time_grid(end if math.isfinite(end) else 0.0, step_s)
    last = [float(t["arrival_s"].max()) for t in (sim.requests, live.requests) if len(t)]
    return Series(
        arrivals_end_s=min(last) if last else 0.0,
        grid=grid,
        queue_sim=waiting_for_first_token(sim.requests, grid),
        queue_live=waiting_for_first_token(live.requests, grid),
        ready_sim=ready_replicas(sim.replicas, grid),
        ready_live=ready_replicas(live.replicas, grid),
    )


def _row(metric: str, load: float, sim: float, live: float, model: str = "all") -> dict[str, object]:
    target = PCT_TARGETS.get(metric, math.nan)
    err = error_pct(sim, live)
    passed: object = None if math.isnan(target) else bool(abs(err) <= target) if not math.isnan(err) else False
    return {"metric": metric, "load": load, "sim": sim, "live": live, "error_pct": err,
            "abs_diff": abs(sim - live), "target": target, "passed": passed, "model": model}  # fmt: skip


def compare_runs(
    sim: RunTables, live: RunTables, *, load: float = math.nan, step_s: float = DEFAULT_STEP_S
) -> tuple[pd.DataFrame, Series]:
    """The tidy comparison (COLUMNS) and the series it was computed from."""
    ms, ml = request_metrics(sim.requests), request_metrics(live.requests)
    rows = [_row(k, load, ms[k], ml[k]) for k in ms]
    series = series_of(sim, live, step_s)
    rows.append(_row("queue_len_mean", load, float(series.queue_sim.mean()), float(series.queue_live.mean())))
    rows[-1]["abs_diff"] = float(np.abs(series.queue_sim - series.queue_live).max())
    for model in sorted(set(series.ready_sim) | set(series.ready_live)):
        if model not in series.ready_sim or model not in series.ready_live:
            continue  # one engine recorded no replica of it: nothing to compare over time
        if not (series.grid <= series.arrivals_end_s).any():
            continue
        window = series.grid <= series.arrivals_end_s
        s, v = series.ready_sim[model][window], series.ready_live[model][window]
        row = _row("ready_replicas", load, float(s.mean()), float(v.mean()), model)
        diff = float(np.abs(s - v).max())
        row.update(abs_diff=diff, target=READY_TARGET_REPLICAS, passed=bool(diff <= READY_TARGET_REPLICAS))
        rows.append(row)
    if sim.steps is not None and live.steps is not None and len(sim.steps) and len(live.steps):
        ss, sl = step_metrics(sim.steps, _span(sim.requests)), step_metrics(live.steps, _span(live.requests))
        rows += [_row(k, load, ss[k], sl[k]) for k in ss]
    return pd.DataFrame(rows, columns=COLUMNS), series


def _span(requests: pd.DataFrame) -> float:
    """First arrival to last answer."""
    return float(requests["finish_s"].max() - requests["arrival_s"].min()) if len(requests) else math.nan


def compare_folders(
    sim_dir: str | Path, live_dir: str | Path, *, load: float = math.nan, step_s: float = DEFAULT_STEP_S
) -> tuple[pd.DataFrame, Series]:
    return compare_runs(load_run(sim_dir, "sim"), load_run(live_dir, "live"), load=load, step_s=step_s)
