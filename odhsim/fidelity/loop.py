"""`odhsim fidelity SCENARIO`: for each load, serve the scenario for real, replay the workload open-loop, simulate
the same requests, and compare.

The live side is `odhsim serve` in a subprocess (the gateway and its replicas compete with nothing but the replay
client for the CPU; the simulator runs after it, never beside it) and the replay in this process. One serve lasts
for every load when the scenario has fixed replicas (loads run one after the other, with a pause); a scenario that
autoscales or injects faults gets a fresh serve per load, so each load starts from the same state, as its
simulation does. Clocks: serve's replica transitions are moved onto the replay's clock (both measured against the
wall clock, to a few milliseconds), so ready replicas over time compare with the simulator's.

Bounded: serve must be ready within `ready_timeout_s`; a replay sends for `duration_s` and waits at most
`straggler_timeout_s` after that; the simulation stops at the same horizon (`hard_stop_s`). This module drives both
engines, so it is in the CLI layer and imports them only inside functions.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odhsim.fidelity.capacity import PAUSE_BETWEEN_LOADS_S, measure_capacity
from odhsim.fidelity.compare import RunTables, compare_runs, load_run
from odhsim.fidelity.live import LiveServer, live_decisions, live_records, run_live
from odhsim.fidelity.machine import CpuMeter
from odhsim.fidelity.plots import plot_fidelity
from odhsim.fidelity.report import write_csv
from odhsim.fidelity.settings import (
    FidelitySettings,
    Hooks,
    base_requests,
    check_live,
    fidelity_scenario,
    needs_fresh_serve,
)
from odhsim.fidelity.workloads import Requests, at_rate, repeated
from odhsim.results.decisions import write_decisions
from odhsim.scenario.model import Scenario

__all__ = ["FidelitySettings", "Hooks", "LiveRun", "LiveServer", "base_requests", "check_live", "finish_live",
           "finish_load", "live_loads", "measure_capacity", "run_fidelity"]  # fmt: skip


# -- the simulated side --------------------------------------------------------------------------------------
def run_sim(fid: Scenario, out: Path, settings: FidelitySettings) -> RunTables:
    from odhsim.sim.run import simulate

    result = simulate(fid)
    result.write(out)
    return load_run(out, "sim")


def aligned_faults(fid: Scenario, live_events: pd.DataFrame) -> tuple[Scenario, float]:
    """The scenario with its timed faults moved to when the live ones started (serve arms its faults once the
    replicas settled, around the replay's first request): (scenario, shift in s; a time never goes below 0)."""
    faults = list(getattr(fid, "faults", None) or [])
    timed = [f.at_s for f in faults if f.at_s is not None]
    if not timed or live_events.empty or "detail" not in live_events.columns:
        return fid, 0.0
    kind, detail = live_events["kind"].astype(str), live_events["detail"].astype(str)
    starts = live_events.loc[
        (kind == "fault") & detail.str.contains(r": start(?: \(|$)"), "time_s"
    ]  # "start (SIGKILL ..)"
    if starts.empty:
        return fid, 0.0
    shift = float(starts.min()) - min(timed)
    moved = [f.model_copy(update={"at_s": max(0.0, f.at_s + shift)}) if f.at_s is not None else f for f in faults]
    return fid.model_copy(update={"faults": moved}), shift


def measured_startup(replicas: pd.DataFrame) -> tuple[float, float] | None:
    """(loading, testing) seconds of the live replicas' starts before the replay (serve's deploy), medians: how
    long a replica process takes here to import torch, build and warm its model, then pass its real inference
    test. None when serve recorded no whole start."""
    if replicas.empty:
        return None
    before = replicas[replicas["time_s"] < 0].sort_values("time_s", kind="stable")
    loads, tests = [], []
    for _, rep in before.groupby("replica", sort=False):
        at = {state: t for t, state in zip(rep["time_s"], rep["state"].astype(str), strict=True)}
        if {"loading", "testing", "ready"} <= set(at):
            loads.append(at["testing"] - at["loading"])
            tests.append(at["ready"] - at["testing"])
    if not loads:
        return None
    return float(np.median(loads)), float(np.median(tests))


def with_startup(fid: Scenario, startup: tuple[float, float] | None) -> Scenario:
    """The simulator's start-up costs set to the measured ones (engine_init_s: the load phase; the weights of a
    tiny model load in no time), so restarts and scale-ups take as long as serve's."""
    if startup is None:
        return fid
    load_s, test_s = startup
    params = fid.startup.model_copy(update={"engine_init_s": max(0.0, load_s), "readiness_test_s": max(0.0, test_s)})
    return fid.model_copy(update={"startup": params})


def with_machine_load(fid: Scenario, others_cores: float) -> Scenario:
    """The scenario with the other load the live run's machine carried (measured while it was served) on every
    calibrated profile that models CPU sharing (its `cpu` section: odhsim.calibrate.cpu_model); others as before."""
    if others_cores != others_cores:  # NaN: not measured
        return fid
    models = []
    for m in fid.models:
        pf = m.profile_file
        if pf is not None and pf.cpu is not None:
            cpu = pf.cpu.model_copy(update={"others_cores": round(max(0.0, others_cores), 4)})
            m = m.model_copy(update={"profile_file": pf.model_copy(update={"cpu": cpu})})
        models.append(m)
    return fid.model_copy(update={"models": models})


# -- the loop ------------------------------------------------------------------------------------------------
def _tenants(scenario: Scenario) -> list[str]:
    tenants = scenario.workload.tenants
    return list(tenants) if tenants else ["default"]


@dataclass(frozen=True, eq=False)
class LiveRun:
    """One load's live run, kept until its serve has stopped (serve writes its replica records then)."""

    load: float
    folder: Path
    scenario: Scenario
    requests: Requests
    replay_zero: float
    serve_zero: float
    serve_out: Path
    others_cpu_cores: float = math.nan
    """Cores the rest of the machine used meanwhile (odhsim.fidelity.machine): other tenants' load."""
    ours_cpu_cores: float = math.nan
    """Cores the live run's own processes used (replay client, gateway, replicas)."""


def _serve(scenario_path: Path, scenario: Scenario, out: Path, settings: FidelitySettings) -> LiveServer:
    server = LiveServer(scenario_path, out, settings.device, _tenants(scenario))
    server.wait_settled(settings.ready_timeout_s)
    return server


def finish_live(run: LiveRun) -> tuple[RunTables, pd.DataFrame, pd.DataFrame]:
    """After its serve stopped: add serve's replica, event and step records of this load to its live folder, and
    the decisions of its own replay (outputs.decisions: `odhsim explain OUT/<load>/live --request N`); (the live
    tables, serve's replica transitions and events on the replay's clock)."""
    live_dir = run.folder / "live"
    replicas, events, steps = live_records(run.serve_out, run.replay_zero - run.serve_zero)
    replicas.to_parquet(live_dir / "replicas.parquet", index=False)
    events.to_parquet(live_dir / "events.parquet", index=False)
    live_tables = load_run(live_dir, "live")
    decisions = live_decisions(run.serve_out, run.replay_zero - run.serve_zero, live_tables.requests)
    if decisions is not None:
        write_decisions(decisions, live_dir / "decisions.parquet")
    if not steps.empty:  # the engine steps of this load's window (a shared serve logged every load's)
        end = float(live_tables.requests["finish_s"].max()) if len(live_tables.requests) else 0.0
        steps[(steps["time_s"] >= -1.0) & (steps["time_s"] <= end)].to_parquet(live_dir / "steps.parquet", index=False)
        live_tables = load_run(live_dir, "live")
    return live_tables, replicas, events


def finish_load(run: LiveRun, settings: FidelitySettings, plots: Path, hooks: Hooks) -> pd.DataFrame:
    """After its serve stopped: complete the live folder, simulate, compare, write the load's fidelity.csv and its
    plot (plots/<folder name>.png)."""
    live_tables, replicas, events = finish_live(run)
    hooks.stage(f"{run.folder.name}: simulating")
    startup = measured_startup(replicas)
    fid, shift = aligned_faults(with_machine_load(with_startup(run.scenario, startup), run.others_cpu_cores), events)
    sim_tables = run_sim(fid, run.folder / "sim", settings)
    table, series = compare_runs(sim_tables, live_tables, load=run.load, step_s=settings.step_s)
    table["rate_rps"] = run.requests.rate_rps
    table["others_cpu_cores"] = run.others_cpu_cores
    table["ours_cpu_cores"] = run.ours_cpu_cores
    table["fault_shift_s"] = shift
    table["startup_load_s"], table["startup_test_s"] = startup if startup is not None else (math.nan, math.nan)
    write_csv(table, run.folder)
    title = f"{run.scenario.name}: load {run.load:g} ({run.requests.rate_rps:.3g} req/s), {run.requests.source}"
    plot_fidelity(sim_tables, live_tables, series, plots / f"{run.folder.name}.png", title=title)
    return table


def live_loads(
    scenario_path: Path,
    scenario: Scenario,
    base: Requests,
    settings: FidelitySettings,
    out: Path,
    hooks: Hooks,
    *,
    capacity_rps: float = math.nan,
    server: LiveServer | None = None,
) -> list[LiveRun]:
    """Every load's live run (folders OUT/load-<load>). With `server` every load uses it and it is left running;
    else one serve is started for all loads, or a fresh one per load when the scenario needs it."""
    fresh = server is None and needs_fresh_serve(scenario, settings)
    own = server is None
    runs: list[LiveRun] = []
    try:
        for load in settings.rates:
            rate = load if settings.absolute else load * capacity_rps
            folder = out / f"load-{load:g}"
            req = at_rate(repeated(base, rate, settings.duration_s), rate, settings.duration_s)
            fid = fidelity_scenario(scenario, req, folder, settings)
            if server is None:
                hooks.stage(f"{folder.name}: starting odhsim serve")
                server = _serve(scenario_path, scenario, folder / "serve", settings)
            elif runs or not own:
                time.sleep(PAUSE_BETWEEN_LOADS_S)  # the previous run's stragglers are gone; let the scrapes settle
            hooks.stage(f"{folder.name}: {len(req)} requests at {rate:.3g} req/s, live")
            meter = CpuMeter([os.getpid()])  # this process, the replay's, and serve's tree under it
            meter.start()
            _, zero = run_live(fid, server, folder / "live", settings, hooks)
            others, ours = meter.read()
            runs.append(LiveRun(load, folder, fid, req, zero, server.t0_epoch, server.out, others, ours))
            if fresh:
                server.stop()
                server = None
    finally:
        if own and server is not None:
            server.stop()
    return runs


def run_fidelity(
    scenario_path: Path, scenario: Scenario, settings: FidelitySettings, out: Path, hooks: Hooks | None = None
) -> pd.DataFrame:
    """Every load live first (nothing else running), then every simulation and comparison; writes
    OUT/fidelity.csv, OUT/fidelity.json, OUT/plots/ and OUT/load-*/{workload.csv,live,sim,fidelity.csv}."""
    hooks = hooks or Hooks()
    check_live(scenario, scenario_path)
    base = base_requests(scenario, settings)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"scenario": str(scenario_path), "workload": base.source}
    capacity = math.nan
    server: LiveServer | None = None
    try:
        if not settings.absolute:
            hooks.stage("capacity: starting odhsim serve")
            server = _serve(scenario_path, scenario, out / "capacity" / "serve", settings)
            capacity = measure_capacity(scenario, base, server, out / "capacity", settings, hooks)
            meta["capacity_rps"] = capacity
            if needs_fresh_serve(scenario, settings):
                server.stop()
                server = None
        runs = live_loads(scenario_path, scenario, base, settings, out, hooks, capacity_rps=capacity, server=server)
    finally:
        if server is not None:
            server.stop()
    tables = [finish_load(run, settings, out / "plots", hooks) for run in runs]
    meta["loads"] = [{"load": r.load, "rate_rps": r.requests.rate_rps, "requests": len(r.requests)} for r in runs]
    result = pd.concat(tables, ignore_index=True)
    write_csv(result, out)
    (out / "fidelity.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return result
