"""`odhsim bench-fidelity`: how far the simulator is from the live engine it ships with, on this machine.

Cases (each short, the whole bench about 6 minutes on 2 cores):
- poisson, bursty (gamma arrivals, cv 3) and azure (a slice of the Azure LLM 2023 conversation trace, token counts
  divided by 8 for the tiny LM) at 0.3, 0.6 and 0.9 of the live capacity, measured first; fixed replicas, one
  `odhsim serve` for all nine runs;
- kpa-rush: the model autoscaled by KPA (1 to 3 replicas), a quiet start and then a rush at 1.2 x capacity;
- crash: fixed replicas at 0.5 x capacity, one replica SIGKILLed (`faults: replica_crash`) and restarted;
- noise: poisson at 0.6 served again right after the poisson runs and compared with the first: the live engine
  against itself, the floor under any simulator's error on this machine.
Every run is compared with its simulation (`odhsim.fidelity.loop`) against issue 11's targets: E2E p50 within 5%,
TTFT p50 / p99 and E2E p99 within 10%, throughput within 2%, ready replicas within one replica at all times.

The base scenario is scenarios/fidelity.yaml (the tiny LM with its calibrated profile) when it exists, else
scenarios/live.yaml's chat model as it is (its profile is then a GPU's, and the gaps say so).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.table import Table

from odhsim.fidelity.compare import PCT_TARGETS, READY_TARGET_REPLICAS, RunTables, compare_runs
from odhsim.fidelity.loop import (
    FidelitySettings,
    Hooks,
    LiveRun,
    LiveServer,
    base_requests,
    check_live,
    finish_live,
    finish_load,
    live_loads,
    measure_capacity,
)
from odhsim.fidelity.report import write_csv
from odhsim.scenario.load import load_scenario

REPO_ROOT = Path(__file__).resolve().parents[2]
FIDELITY_SCENARIO = REPO_ROOT / "scenarios" / "fidelity.yaml"
LIVE_SCENARIO = REPO_ROOT / "scenarios" / "live.yaml"
AZURE_CONV = REPO_ROOT / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
LOADS = (0.3, 0.6, 0.9)
AZURE_TOKEN_SCALE = 8.0
NOISE_LOAD = 0.6
NOISE_CASE = "noise: live vs live"
SHOWN = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps")


@dataclass(frozen=True)
class BenchSettings:
    duration_s: float = 20.0
    rush_duration_s: float = 30.0
    device: str = "cpu"
    scenario: Path | None = None
    cases: tuple[str, ...] = ("poisson", "bursty", "azure", "kpa-rush", "crash")
    calibrate: bool = True
    """Calibrate the base scenario's LLM on this machine right before the runs (`odhsim calibrate --cpu-share`,
    about 40 s), so the profile holds the machine's current cost per token and its CPU sharing; False: use the
    base's profile file as it is (a base without one is calibrated anyway)."""


def base_doc(path: Path) -> dict[str, Any]:
    """The base scenario's first LLM alone, its profile file (if any) made absolute, serving on any free port."""
    doc = yaml.safe_load(path.read_text())
    llm = next(m for m in doc["models"] if m.get("kind") == "llm" and m.get("live"))
    prof = llm.get("profile")
    if isinstance(prof, dict) and isinstance(prof.get("file"), str):
        llm["profile"] = {**prof, "file": str((path.parent / prof["file"]).resolve())}
    llm.pop("autoscaling", None)
    llm.setdefault("replicas", 2)
    doc["models"] = [llm]
    doc.pop("faults", None)
    doc["workload"]["models"] = {llm["name"]: 1}
    doc["live"] = {**doc.get("live", {}), "port": 0}
    doc["gateway"] = {k: v for k, v in doc.get("gateway", {}).items() if k != "response_cache"}
    return doc


def _source(kind: str, rate: float, duration_s: float, lengths: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "rate": rate, "duration_s": duration_s, **lengths, **extra}


def case_docs(base: dict[str, Any], bench: BenchSettings) -> dict[str, dict[str, Any]]:
    """One scenario document per case (workload and deployment; the rates are rescaled later)."""
    src = base["workload"]["sources"][0]
    lengths = {k: src[k] for k in ("prompt_tokens", "output_tokens") if k in src}
    llm = base["models"][0]
    name = llm["name"]
    docs: dict[str, dict[str, Any]] = {}
    poisson = copy.deepcopy(base)
    poisson["workload"]["sources"] = [_source("poisson", 4.0, 600.0, lengths)]
    docs["poisson"] = poisson
    bursty = copy.deepcopy(base)
    bursty["workload"]["sources"] = [_source("gamma", 4.0, 600.0, lengths, cv=3.0)]
    docs["bursty"] = bursty
    docs["azure"] = copy.deepcopy(poisson)  # served the same; the workload comes from the trace
    rush = copy.deepcopy(base)
    rush["models"][0]["replicas"] = 1
    rush["models"][0]["autoscaling"] = {
        "type": "kpa",
        "params": {"min_replicas": 1, "max_replicas": 3, "container_concurrency": 8, "stable_window_s": 6,
                   "tick_s": 0.5},
        "interval_s": 1.0,
        "metrics_interval_s": 0.5,
    }  # fmt: skip
    quiet_s = bench.rush_duration_s / 3
    rush["workload"]["sources"] = [
        _source("poisson", 0.2, bench.rush_duration_s, lengths, name="steady"),
        _source("poisson", 1.0, bench.rush_duration_s - quiet_s, lengths, name="rush", start_s=quiet_s),
    ]
    docs["kpa-rush"] = rush
    crash = copy.deepcopy(poisson)
    crash["faults"] = [{"kind": "replica_crash", "name": "crash", "model": name, "replica": 0,
                        "at_s": round(bench.duration_s / 3, 1)}]  # fmt: skip
    docs["crash"] = crash
    return docs


def _write(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def calibrated(base: dict[str, Any], out: Path, bench: BenchSettings, hooks: Hooks) -> Path:
    """`odhsim calibrate --cpu-share` of the base scenario's LLM on this machine (so the simulation can share the
    cores with the other load each live run measured): the calibrated scenario's path."""
    from odhsim.calibrate.instrumented import CalibrateOptions, calibrate_scenario

    path = _write(base, out / "scenarios" / "base.yaml")
    hooks.stage("calibrating the live model on this machine (odhsim calibrate --cpu-share)")
    calibrate_scenario(path, CalibrateOptions(device=bench.device, measure_cpu=True), out / "calib")
    return out / "calib" / "base-calibrated.yaml"


def noise_floor(first: LiveRun, again: LiveRun) -> pd.DataFrame:
    """The same requests served twice on one serve, compared as if the first run were the simulation: what the
    live engine's own run-to-run noise is on this machine (no simulator can be held closer than that)."""
    a, _, _ = finish_live(first)
    b, _, _ = finish_live(again)
    table, _ = compare_runs(RunTables("sim", a.requests, a.replicas, a.steps), b, load=first.load)
    table.insert(0, "case", NOISE_CASE)
    table["rate_rps"] = again.requests.rate_rps
    table["others_cpu_cores"] = again.others_cpu_cores
    table["ours_cpu_cores"] = again.ours_cpu_cores
    write_csv(table, again.folder)
    return table


def run_bench_fidelity(out: Path, bench: BenchSettings, hooks: Hooks | None = None) -> pd.DataFrame:
    """Run the cases; returns (and writes OUT/bench-fidelity.csv) the long table with a `case` column."""
    hooks = hooks or Hooks()
    base_path = bench.scenario or (FIDELITY_SCENARIO if FIDELITY_SCENARIO.is_file() else LIVE_SCENARIO)
    base = base_doc(base_path)
    has_file = isinstance(base["models"][0].get("profile"), dict)
    if bench.calibrate or not has_file:
        base_path = calibrated(base, out, bench, hooks)
        base = base_doc(base_path)
    docs = case_docs(base, bench)
    paths = {case: _write(doc, out / "scenarios" / f"{case}.yaml") for case, doc in docs.items()}
    settings = FidelitySettings(rates=LOADS, duration_s=bench.duration_s, device=bench.device)
    fixed = [c for c in ("poisson", "bursty", "azure") if c in bench.cases]
    runs: list[tuple[str, LiveRun]] = []
    noise: list[LiveRun] = []
    sc = load_scenario(paths["poisson"])
    check_live(sc, paths["poisson"])
    hooks.stage("capacity: starting odhsim serve")
    server = LiveServer(paths["poisson"], out / "capacity" / "serve", bench.device, ["default"])
    try:
        server.wait_settled(settings.ready_timeout_s)
        capacity = measure_capacity(sc, base_requests(sc, settings), server, out / "capacity", settings, hooks)
        for case in fixed:
            case_sc = load_scenario(paths[case])
            case_settings = settings
            if case == "azure":
                case_settings = replace(settings, workload=AZURE_CONV, length_scale=AZURE_TOKEN_SCALE)
            base = base_requests(case_sc, case_settings)
            for run in live_loads(paths[case], case_sc, base, case_settings, out / case, hooks, capacity_rps=capacity,
                                  server=server):  # fmt: skip
                runs.append((case, run))
            if case == "poisson":  # the noise floor: poisson at 0.6 served again at once, the engine against itself
                again = replace(settings, rates=(NOISE_LOAD,))
                noise = live_loads(paths[case], case_sc, base, again, out / "noise", hooks, capacity_rps=capacity,
                                   server=server)  # fmt: skip
    finally:
        server.stop()
    if "kpa-rush" in bench.cases:
        # steady at 0.2 x capacity, the rush adds 1.0 x capacity: absolute rates, replayed as generated
        rush = copy.deepcopy(docs["kpa-rush"])
        steady, extra = rush["workload"]["sources"]
        steady["rate"], extra["rate"] = round(float(0.2 * capacity), 3), round(float(capacity), 3)
        rush_path = _write(rush, paths["kpa-rush"])
        rush_sc = load_scenario(rush_path)
        rush_settings = replace(settings, absolute=True, duration_s=bench.rush_duration_s)
        base = base_requests(rush_sc, rush_settings)
        rush_settings = replace(rush_settings, rates=(round(base.rate_rps, 3),))
        runs += [("kpa-rush", r) for r in live_loads(rush_path, rush_sc, base, rush_settings, out / "kpa-rush",
                                                      hooks)]  # fmt: skip
    if "crash" in bench.cases:
        crash_sc = load_scenario(paths["crash"])
        crash_settings = replace(settings, rates=(0.5,), fresh_serve=True)
        base = base_requests(crash_sc, crash_settings)
        runs += [("crash", r) for r in live_loads(paths["crash"], crash_sc, base, crash_settings, out / "crash",
                                                   hooks, capacity_rps=capacity)]  # fmt: skip
    tables = []
    if noise:
        first = next(r for c, r in runs if c == "poisson" and r.load == NOISE_LOAD)
        tables.append(noise_floor(first, noise[0]))
    for case, run in runs:
        table = finish_load(run, settings, out / "plots" / case, hooks)
        table.insert(0, "case", case)
        if case == "kpa-rush":  # run at an absolute rate: shown as a fraction of the capacity too
            table["load"] = run.requests.rate_rps / capacity
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    result["capacity_rps"] = capacity
    result["base_scenario"] = str(
        base_path.relative_to(REPO_ROOT) if base_path.is_relative_to(REPO_ROOT) else base_path
    )
    write_csv(result, out, "bench-fidelity.csv")
    return result


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "-"
    if row["metric"] == "ready_replicas":
        text = f"{row['abs_diff']:.0f}"
    else:
        err = row["error_pct"]
        text = "-" if err != err else f"{err:+.1f}%"
    passed = row["passed"]
    if passed is None or (isinstance(passed, float) and math.isnan(passed)):
        return text
    return f"[green]{text}[/]" if bool(passed) else f"[red]{text}[/]"


def bench_table(result: pd.DataFrame) -> Table:
    """One row per (case, load): the simulator's error per metric, green within the target, red outside."""
    cap = float(result["capacity_rps"].iloc[0])
    title = (f"bench-fidelity: simulator error vs live (capacity {cap:.3g} req/s; targets: E2E p50 5%, TTFT p50/p99 "
             f"and E2E p99 10%, throughput 2%, ready replicas {READY_TARGET_REPLICAS:g})")  # fmt: skip
    table = Table(title=title, header_style="bold")
    for col in ("case", "load", "req/s", *SHOWN, "ready max |diff|", "passed", "cores ours/others"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for (case, load), rows in result.groupby(["case", "load"], sort=False):
        by_metric = {r["metric"]: r for _, r in rows.iterrows() if r["model"] == "all"}
        ready = rows[rows["metric"] == "ready_replicas"]
        judged = rows[rows["metric"].isin([*PCT_TARGETS, "ready_replicas"])]
        n_pass = int(judged["passed"].astype(bool).sum())
        cores = [float(rows[c].iloc[0]) if c in rows else math.nan for c in ("ours_cpu_cores", "others_cpu_cores")]
        table.add_row(
            str(case), f"{load:.2f}", f"{rows['rate_rps'].iloc[0]:.3g}",
            *(_cell(by_metric.get(m)) for m in SHOWN),
            _cell(ready.iloc[0]) if len(ready) else "-", f"{n_pass}/{len(judged)}",
            "/".join("-" if c != c else f"{c:.2f}" for c in cores),
        )  # fmt: skip
    return table
