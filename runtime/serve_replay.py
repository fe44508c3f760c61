"""Serve a scenario and replay a workload against it in one process, faults armed as the replay starts: the live
half of a sim-vs-live comparison (`odhsim serve SCENARIO --replay SOURCE --out DIR`).

Order: start the stack (gateway, controllers, replicas), wait until every model's initial replicas settled, arm the
scenario's faults (their times count from here), replay SOURCE open-loop against the gateway (a trace file, or a
scenario whose workload is built as the simulator builds it; the scenario itself for its own workload), stop
everything. Faults are armed just before the replay's clock starts: a fault at `at_s` lands at about `at_s` of
the workload's time (the replay's first request is due ~0.2 s after arming, its start-up checks).

DIR then reads like `odhsim run --out DIR`: requests.parquet and summary.json from the replay (with `attempts`,
`availability`, `retry_amplification`), events.parquet and replicas.parquet from the stack, their times shifted to
count from the arming (the workload's time); with `outputs.decisions`, decisions.parquet on the replay's own clock
(that of requests.parquet's times, read in this process: exact to the event loop's resolution), its request_id the
replay's (runtime.decision_ids.with_client_ids), so `odhsim explain DIR --request N` joins them. DIR/serve/ keeps the
stack's own records (times since serve started, events.jsonl, serve.json, replica logs, decisions.parquet).
Without API keys in the scenario or $ODHSIM_API_KEYS, one random key per tenant is made for the run (priority
critical; each request still asks for its own class).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from odhsim.results.decisions import read_decisions, write_decisions
from odhsim.results.run_result import RunResult
from odhsim.scenario.checks import live_refusals
from odhsim.scenario.model import Scenario
from runtime.gateway.auth import ENV_VAR
from runtime.replay import ProgressFn, replay_async
from runtime.serve import LiveStack, ServeError

DEPLOY_TIMEOUT_S = 600.0
"""The most the initial replicas may take to settle before the replay starts."""


@contextlib.contextmanager
def run_keys(scenario: Scenario) -> Iterator[dict[str, str]]:
    """The environment the replay's key chooser reads: the configured keys, or (none configured) one fresh key per
    tenant put into $ODHSIM_API_KEYS for the stack while it runs."""
    if scenario.live.api_keys_file is not None or os.environ.get(ENV_VAR) or scenario.live.allow_anonymous:
        yield dict(os.environ)
        return
    wl = scenario.workload
    tenants = sorted({*(wl.tenants or {}), *(t for src in wl.sources for t in (getattr(src, "tenants", None) or {}))})
    tenants = tenants or ["default"]
    value = ",".join(f"replay-{secrets.token_urlsafe(12)}:{t}:critical" for t in tenants)
    os.environ[ENV_VAR] = value
    try:
        yield {ENV_VAR: value}
    finally:
        os.environ.pop(ENV_VAR, None)


def _shifted(frame: pd.DataFrame, origin: float) -> pd.DataFrame:
    """`frame` with time_s counted from `origin` (serve's clock reading of the faults' arming, or of the replay's
    zero)."""
    out = frame.copy()
    out["time_s"] = out["time_s"] - origin
    return out


async def serve_and_replay(
    scenario: Scenario,
    source: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    progress: ProgressFn | None = None,
    **replay_options: Any,
) -> RunResult:
    """See the module doc; `replay_options` are `replay_async`'s (speed, limit, max_duration_s, ...)."""
    refused = live_refusals(scenario)
    if refused:
        raise ServeError("the live engine cannot serve this scenario: " + "; ".join(refused))
    out = Path(out_dir)
    with run_keys(scenario) as env:
        stack = LiveStack(scenario, port=0, device=device, out_dir=out / "serve")
        try:
            await stack.start()
            await stack.wait_deployed(DEPLOY_TIMEOUT_S)
            stack.arm_faults()
            origin = stack.clock() if stack.faults is None else stack.faults.origin
            zero: list[float] = []  # the replay clock's zero, a time.monotonic() reading
            result = await replay_async(
                source, stack.url, out_dir=out, progress=progress, env=env, on_clock_zero=zero.append,
                **replay_options,
            )  # fmt: skip
        finally:
            await stack.stop()
    events = _shifted(pd.read_parquet(out / "serve" / "events.parquet"), origin)
    replicas = _shifted(pd.read_parquet(out / "serve" / "replicas.parquet"), origin)
    events.to_parquet(out / "events.parquet", index=False)
    replicas.to_parquet(out / "replicas.parquet", index=False)
    decisions = None
    if (out / "serve" / "decisions.parquet").exists():
        replay_zero = zero[0] - stack.t0 if zero else origin  # on serve's clock
        decisions = _shifted(read_decisions(out / "serve" / "decisions.parquet"), replay_zero)
        write_decisions(decisions, out / "decisions.parquet")
    return dataclasses.replace(result, events=events, replicas=replicas, decisions=decisions)


def serve_replay(scenario: Scenario, source: str | Path, out_dir: str | Path, **kw: Any) -> RunResult:
    """`serve_and_replay` in its own event loop (uvloop when installed, as `odhsim serve`)."""
    from runtime.serve import _loop_factory

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve_and_replay(scenario, source, out_dir, **kw))
