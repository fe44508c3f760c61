"""The live side of a fidelity run: `odhsim serve` in a subprocess and the open-loop replay against it, with the
clock readings that put serve's records on the replay's clock. Drives the live runtime, so it is in the CLI layer
and imports it only inside functions."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from odhsim.fidelity.compare import FidelityError, RunTables
from odhsim.fidelity.settings import FidelitySettings, Hooks
from odhsim.scenario.model import Scenario

T = TypeVar("T")
STARTING_STATES = frozenset({"pending", "downloading", "loading", "testing"})
FIDELITY_KEYS_PREFIX = "fidelity-key"


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
        raise FidelityError(f"odhsim serve: replicas not ready after {timeout_s:g} s; see {self.proc.log.name}")

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


def replay_tag(out: Path) -> str:
    """The prompt tag of the replay written to `out` (runtime.replay_plan.synth_prompt): one serve takes several
    replays (capacity probes, loads, the noise run) whose prompts would otherwise be the same text row by row, and
    the gateway's prefix-cache scorer, remembering which replica served each earlier one, would send every request
    where its twin went (herding the simulation, which starts with an empty index, never sees)."""
    return hashlib.blake2b(str(out.resolve()).encode(), digest_size=3).hexdigest()


def run_live(
    fid: Scenario, server: LiveServer, out: Path, settings: FidelitySettings, hooks: Hooks
) -> tuple[RunTables, float]:
    """Replay the fidelity scenario's requests against `server`, prompts tagged by `out` (replay_tag); (the live
    tables, replay clock zero in epoch s). Writes requests.parquet and summary.json to `out` (replicas and events
    are added when serve stops)."""
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
            prompt_tag=replay_tag(out),
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


WINDOW_SLACK_S = 1.0
"""How far before a load's first arrival and after its last answer its decisions are looked for (loads on one
serve are PAUSE_BETWEEN_LOADS_S = 2 s apart; the clocks agree to a few ms)."""


def live_decisions(serve_out: Path, shift_s: float, requests: pd.DataFrame) -> pd.DataFrame | None:
    """The decisions (serve's decisions.parquet, `outputs.decisions`) of the replay that wrote `requests`, times
    moved onto its clock (minus `shift_s`): those of its time window, from its first arrival to its last answer
    (one serve takes several replays, each numbering its requests from 0), and of its requests or none (scale
    decisions, transitions). None when serve recorded no decisions."""
    from odhsim.results.decisions import read_decisions

    path = serve_out / "decisions.parquet"
    if not path.is_file():
        return None
    frame = read_decisions(path)
    frame = frame.assign(time_s=frame["time_s"] - shift_s)
    if requests.empty:
        return frame.iloc[:0]
    times = requests[[c for c in ("arrival_s", "start_s", "finish_s") if c in requests.columns]].to_numpy(float)
    start, end = float(np.nanmin(times)) - WINDOW_SLACK_S, float(np.nanmax(times)) + WINDOW_SLACK_S
    ids = requests["request_id"].to_numpy()
    rid = frame["request_id"]
    mine = (frame["time_s"] >= start) & (frame["time_s"] <= end) & ((rid < 0) | rid.isin(ids))
    return frame[mine].reset_index(drop=True)


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
