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
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from odhsim.fidelity.compare import FidelityError, RunTables, compare_runs, load_run
from odhsim.fidelity.plots import plot_fidelity
from odhsim.fidelity.report import write_csv
from odhsim.fidelity.workloads import (
    Requests,
    at_rate,
    fit_lengths,
    repeated,
    replaying,
    scenario_requests,
    trace_requests,
    write_trace,
)
from odhsim.scenario.model import Scenario

T = TypeVar("T")
STARTING_STATES = frozenset({"pending", "downloading", "loading", "testing"})
PAUSE_BETWEEN_LOADS_S = 2.0
FIDELITY_KEYS_PREFIX = "fidelity-key"


@dataclass(frozen=True)
class FidelitySettings:
    """rates: fractions of the measured capacity, or req/s with `absolute`; duration_s: each load's sending time;
    workload: a trace file instead of the scenario's workload (its first requests from `skip_s`); length_scale:
    token counts are divided by it (a trace of a big model's lengths, replayed on a tiny one)."""

    rates: tuple[float, ...] = (0.3, 0.6, 0.9)
    absolute: bool = False
    duration_s: float = 30.0
    workload: Path | None = None
    skip_s: float = 0.0
    length_scale: float = 1.0
    device: str = "cpu"
    step_s: float = 0.5
    probe_requests: int | None = None
    straggler_timeout_s: float = 60.0
    ready_timeout_s: float = 240.0
    fresh_serve: bool | None = None
    """None: fresh per load only when the scenario autoscales or has faults."""
    sim_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise FidelityError(f"--rates must be positive numbers, got {list(self.rates)}")
        if not self.absolute and any(r > 2 for r in self.rates):
            raise FidelityError(f"--rates {list(self.rates)}: fractions of capacity above 2; add --absolute for req/s")
        if not self.duration_s > 0:
            raise FidelityError(f"--duration must be > 0, got {self.duration_s}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise FidelityError(f"--device must be auto, cpu or cuda, got {self.device!r}")


Stage = Callable[[str], None]
ReplayProgress = Callable[[int, int, int], None]


@dataclass
class Hooks:
    """What the caller shows: a stage line, and replay progress (sent, done, total)."""

    stage: Stage = lambda text: None
    replay: ReplayProgress | None = None


def check_live(scenario: Scenario, path: Path) -> None:
    """The scenario must be servable: every model needs its `live:` section (what its replicas run)."""
    missing = [f"models.{i} ({m.name})" for i, m in enumerate(scenario.models) if m.live is None]
    if len(missing) == len(scenario.models):
        raise FidelityError(
            f"{path}: no model has a `live:` section, so there is nothing to serve; odhsim fidelity compares the "
            "simulator with `odhsim serve` (see scenarios/live.yaml or scenarios/fidelity.yaml)"
        )
    if missing:
        raise FidelityError(f"{path}: {', '.join(missing)}: no `live:` section (every model must be servable)")
    from odhsim.scenario.checks import live_refusals

    refused = live_refusals(scenario)
    if refused:
        raise FidelityError(f"{path}: the live engine cannot serve it: " + "; ".join(refused))


def token_limits(scenario: Scenario) -> tuple[int, int, int | None]:
    """(max prompt, max output, LM context) the live engine accepts for this scenario's requests."""
    limits = scenario.live.limits
    contexts = [
        m.engine.max_model_len or m.live.lm.max_seq_len
        for m in scenario.models
        if m.live is not None and m.live.lm is not None
    ]
    return limits.max_prompt_tokens, limits.max_tokens, min(contexts) if contexts else None


def base_requests(scenario: Scenario, settings: FidelitySettings) -> Requests:
    """The request list every load rescales: the trace's or the scenario's, tokens fitted to the live model."""
    if settings.workload is not None:
        raw = trace_requests(settings.workload, limit=50_000, skip_s=settings.skip_s)
    else:
        raw = scenario_requests(scenario)
    max_prompt, max_output, context = token_limits(scenario)
    return fit_lengths(
        raw, max_prompt=max_prompt, max_output=max_output, max_model_len=context, length_scale=settings.length_scale
    )


def needs_fresh_serve(scenario: Scenario, settings: FidelitySettings) -> bool:
    if settings.fresh_serve is not None:
        return settings.fresh_serve
    return any(m.autoscaling is not None for m in scenario.models) or bool(getattr(scenario, "faults", None))


# -- the live side -------------------------------------------------------------------------------------------
class LiveServer:
    """`odhsim serve` in a subprocess with one API key per tenant (priority critical: the request's
    x-odhsim-priority header then decides), and the wall-clock time of its clock's zero."""

    def __init__(self, scenario_path: Path, out: Path, device: str, tenants: list[str]) -> None:
        from runtime.bench_serve import ServeProcess

        self.keys = ",".join(f"{FIDELITY_KEYS_PREFIX}-{i}:{t}:critical" for i, t in enumerate(tenants))
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = ServeProcess(scenario_path, out, device, keys=self.keys)
        self.t0_epoch = math.nan
        self.url = ""

    def wait_settled(self, timeout_s: float) -> None:
        """Until every model has a ready replica and none is still starting (its deploy is over)."""
        from runtime.bench_serve import BenchError

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.proc.poll() is not None:
                raise FidelityError(f"odhsim serve exited with {self.proc.proc.returncode}; see {self.proc.log.name}")
            st, mtime = self._status()
            models = st.get("models", [])
            states = [[r["state"] for r in m["replicas"]] for m in models]
            if st.get("url") and models and all("ready" in s and not STARTING_STATES & set(s) for s in states):
                self.url = st["url"]
                self.t0_epoch = mtime - float(st["time_s"])
                return
            time.sleep(0.2)
        self.stop()
        raise FidelityError(f"odhsim serve: replicas not ready after {timeout_s:g} s; see {self.proc.log.name}") from (
            BenchError("timeout")
        )

    def _status(self) -> tuple[dict[str, Any], float]:
        path = self.out / "serve.json"
        try:
            mtime = path.stat().st_mtime
            return json.loads(path.read_text()), mtime
        except (OSError, ValueError):
            return {}, math.nan

    def clock_zero_now(self) -> float:
        """serve's clock zero, re-read (serve.json is rewritten on every change, with its own clock reading)."""
        st, mtime = self._status()
        return mtime - float(st["time_s"]) if "time_s" in st else self.t0_epoch

    def stop(self) -> None:
        self.proc.stop()


def run_live(
    fid: Scenario, server: LiveServer, out: Path, settings: FidelitySettings, hooks: Hooks
) -> tuple[RunTables, float]:
    """Replay the fidelity scenario's requests against `server`; (the live tables, replay clock zero in epoch s).
    Writes requests.parquet and summary.json to `out` (replicas and events are added when serve stops)."""
    from runtime.replay import replay_async

    first: list[float] = []

    def progress(sent: int, done: int, total: int) -> None:
        if not first and sent:
            first.append(time.time())
        if hooks.replay is not None:
            hooks.replay(sent, done, total)

    env = {"ODHSIM_API_KEYS": server.keys}
    result = _run_async(
        lambda: replay_async(
            fid, server.url, limit=None, max_duration_s=None, env=env, progress=progress,
            straggler_timeout_s=settings.straggler_timeout_s, request_timeout_s=settings.duration_s + 60.0,
        )
    )  # fmt: skip
    first_arrival = float(result.requests["arrival_s"].min()) if len(result.requests) else 0.0
    zero = first[0] - first_arrival if first else math.nan
    result.write(out)
    return RunTables("live", result.requests, pd.DataFrame()), zero


def _run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(make()), in a thread of its own when this thread already runs a loop (a notebook's kernel)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def live_records(serve_out: Path, shift_s: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """serve's replicas, events and steps tables, times moved onto the replay's clock (minus `shift_s`)."""
    out = []
    for name in ("replicas", "events", "steps"):
        path = serve_out / f"{name}.parquet"
        frame = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        if not frame.empty:
            frame = frame.assign(time_s=frame["time_s"] - shift_s)
        out.append(frame)
    return out[0], out[1], out[2]


# -- the simulated side --------------------------------------------------------------------------------------
def run_sim(fid: Scenario, out: Path, settings: FidelitySettings) -> RunTables:
    from odhsim.sim.run import simulate

    result = simulate(fid)
    result.write(out)
    return load_run(out, "sim")


def fidelity_scenario(scenario: Scenario, req: Requests, folder: Path, settings: FidelitySettings) -> Scenario:
    """The scenario replaying `req` (written to folder/requests.csv), stopping by itself."""
    trace = write_trace(req, folder / "workload.csv")
    fid = replaying(scenario, trace, settings.duration_s)
    hard = settings.duration_s + settings.straggler_timeout_s
    update: dict[str, Any] = {"hard_stop_s": hard, **settings.sim_overrides}
    if "steps" in type(fid.outputs).model_fields:  # the simulator's step log, to read beside serve's
        update["outputs"] = fid.outputs.model_copy(update={"steps": True})
    return fid.model_copy(update=update)


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


# -- capacity ------------------------------------------------------------------------------------------------
def probe_size(scenario: Scenario, settings: FidelitySettings) -> int:
    if settings.probe_requests is not None:
        return settings.probe_requests
    seqs = sum(
        m.replicas * (m.live.max_num_seqs if m.kind == "llm" else m.live.max_batch_size)
        for m in scenario.models
        if m.live is not None
    )
    return int(min(400, max(48, 4 * seqs)))


def burst_throughput(requests: pd.DataFrame) -> float:
    """ok answers per second from the first arrival to the last answer of a burst: a first, rough capacity (a
    burst keeps every batch full, which open-loop arrivals do not; the drain's tail pulls it down a little)."""
    ok = requests[requests["status"].astype(str) == "ok"]
    if len(ok) < 10:
        return math.nan
    span = float(ok["finish_s"].max() - requests["arrival_s"].min())
    return len(ok) / span if span > 0 else math.nan


def sustained_throughput(requests: pd.DataFrame, start_s: float, end_s: float) -> float:
    """ok answers per second finishing within [start_s, end_s) of an open-loop overload: the queue never empties
    there, so this is the rate the system keeps up with."""
    finish = requests.loc[requests["status"].astype(str) == "ok", "finish_s"].to_numpy(dtype=float)
    inside = int(((finish >= start_s) & (finish < end_s)).sum())
    return inside / (end_s - start_s) if end_s > start_s else math.nan


SUSTAIN_S, SUSTAIN_WARMUP_S, OVERLOAD = 10.0, 3.0, 1.3


def measure_capacity(
    scenario: Scenario, base: Requests, server: LiveServer, folder: Path, settings: FidelitySettings, hooks: Hooks
) -> float:
    """Live capacity in req/s, what open-loop arrivals can be served at: a burst gives a first estimate c0; then
    Poisson-like arrivals of the workload at 1.3 x c0 for 10 s, and the ok answers per second between 3 s and 10 s
    (the queue full all along) are the capacity. Both probes and their figures are kept in `folder`."""
    n = min(probe_size(scenario, settings), len(base))
    burst = Requests(np.linspace(0.0, 1.0, n), base.prompt_tokens[:n], base.output_tokens[:n], base.source)
    probe = fidelity_scenario(scenario, burst, folder / "burst", settings).model_copy(update={"duration_s": 2.0})
    hooks.stage(f"capacity: {n} requests at once")
    tables, _ = run_live(probe, server, folder / "burst" / "live", settings, hooks)
    rough = burst_throughput(tables.requests)
    if not rough > 0:
        raise FidelityError(f"capacity probe: too few requests answered ok (see {folder / 'burst' / 'live'})")
    time.sleep(PAUSE_BETWEEN_LOADS_S)
    offered = OVERLOAD * rough
    over = at_rate(repeated(base, offered, SUSTAIN_S), offered, SUSTAIN_S)
    probe = fidelity_scenario(scenario, over, folder / "sustained", settings).model_copy(
        update={"duration_s": SUSTAIN_S}
    )
    hooks.stage(f"capacity: {len(over)} requests at {offered:.3g} req/s (1.3 x the burst's {rough:.3g})")
    tables, _ = run_live(probe, server, folder / "sustained" / "live", settings, hooks)
    cap = sustained_throughput(tables.requests, SUSTAIN_WARMUP_S, SUSTAIN_S)
    if not cap > 0:
        raise FidelityError(f"capacity probe: no answers while overloaded (see {folder / 'sustained' / 'live'})")
    doc = {"capacity_rps": cap, "burst_rps": rough, "burst_requests": n, "offered_rps": over.rate_rps,
           "sustained_requests": len(over), "window_s": [SUSTAIN_WARMUP_S, SUSTAIN_S]}  # fmt: skip
    (folder / "capacity.json").write_text(json.dumps(doc) + "\n")
    return cap


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


def _serve(scenario_path: Path, scenario: Scenario, out: Path, settings: FidelitySettings) -> LiveServer:
    server = LiveServer(scenario_path, out, settings.device, _tenants(scenario))
    server.wait_settled(settings.ready_timeout_s)
    return server


def finish_load(run: LiveRun, settings: FidelitySettings, plots: Path, hooks: Hooks) -> pd.DataFrame:
    """After its serve stopped: add serve's replica records to the live folder, simulate, compare, write the
    load's fidelity.csv and its plot (plots/<folder name>.png)."""
    live_dir = run.folder / "live"
    replicas, events, steps = live_records(run.serve_out, run.replay_zero - run.serve_zero)
    replicas.to_parquet(live_dir / "replicas.parquet", index=False)
    events.to_parquet(live_dir / "events.parquet", index=False)
    live_tables = load_run(live_dir, "live")
    if not steps.empty:  # the engine steps of this load's window (a shared serve logged every load's)
        end = float(live_tables.requests["finish_s"].max()) if len(live_tables.requests) else 0.0
        steps[(steps["time_s"] >= -1.0) & (steps["time_s"] <= end)].to_parquet(live_dir / "steps.parquet", index=False)
        live_tables = load_run(live_dir, "live")
    hooks.stage(f"{run.folder.name}: simulating")
    startup = measured_startup(replicas)
    fid, shift = aligned_faults(with_startup(run.scenario, startup), events)
    sim_tables = run_sim(fid, run.folder / "sim", settings)
    table, series = compare_runs(sim_tables, live_tables, load=run.load, step_s=settings.step_s)
    table["rate_rps"] = run.requests.rate_rps
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
            _, zero = run_live(fid, server, folder / "live", settings, hooks)
            runs.append(LiveRun(load, folder, fid, req, zero, server.t0_epoch, server.out))
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
