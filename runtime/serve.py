"""`odhsim serve SCENARIO`: the gateway (uvicorn), one controller per model and their replica processes, in one
asyncio event loop.

Start: keys (live.api_keys_file, else $ODHSIM_API_KEYS), `build_gateway`, the controllers (autoscalers built as
the simulator builds them: `build_autoscaler(section, RngStreams(seed).get("autoscaler.<model>"))`), the listening
socket, uvicorn, then every model's deploy flow. Stop (SIGINT / SIGTERM / `duration_s`): uvicorn stops accepting and
lets the requests it holds finish (bounded), the controllers drain and terminate every replica (SIGTERM, then
SIGKILL), and, with `out_dir`, events.parquet, replicas.parquet and steps.parquet (every replica's engine steps,
spooled by the replicas to out_dir/steps/, runtime.replica.steps_spool) are written, and decisions.parquet with
`outputs.decisions`, its request ids the clients' when they are integers (runtime.decision_ids). events.jsonl and
serve.json are kept current while it runs, so tests and tools can follow it. Every process is stopped on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from odhsim.errors import OdhsimError
from odhsim.results.decisions import decisions_frame, merge_in_time, write_decisions
from odhsim.results.run_result import RunResult
from odhsim.results.steps import write_steps
from odhsim.rng import RngStreams
from odhsim.scenario.checks import live_refusals
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from policies.autoscaling.config import build_autoscaler
from policies.decisions import ListRecorder
from policies.lifecycle.states import READY, RestartBackoff, RestartBackoffParams
from runtime.capacity import live_capacity
from runtime.controller import EVENT_COLUMNS, ControllerSettings, EventLog, LiveEvent, ModelController
from runtime.decision_ids import with_client_ids
from runtime.readiness import HttpProber
from runtime.replica_secret import new_secret, secret_headers
from runtime.transport import uvicorn_options

REACTION_RECORDS = frozenset({"retry", "fallback", "alert"})
"""The gateway core's Records that become events (odhsim.sim.gateway logs the same kinds)."""
SHUTDOWN_GRACE_S = 30.0
"""The most uvicorn waits for open requests once it stops accepting."""
TRANSPORT_BACKSTOP_S = 1.0
"""The gateway answers (and counts) a body that missed its read deadline itself; the protocol's 408 comes this much
later, only if the app did not."""


class ServeError(OdhsimError):
    """`odhsim serve` cannot start (keys, port, missing live extra); the CLI prints it and exits 2."""


def restart_backoff(spec: RestartBackoffParams) -> RestartBackoff:
    """The controllers' CrashLoopBackOff from the scenario's `live.restart_backoff`."""
    return RestartBackoff(base_s=spec.base_s, factor=spec.factor, max_s=spec.max_s, reset_after_s=spec.reset_after_s)


def controller_settings(scenario: Scenario) -> ControllerSettings:
    """The controllers' settings for a scenario: the defaults, with its restart back-off."""
    return ControllerSettings(backoff=restart_backoff(scenario.live.restart_backoff))


class _Server:
    """uvicorn.Server without its own signal handling: serve() owns SIGINT/SIGTERM so it can drain replicas."""

    def __init__(self, app: Any, live_host: str, graceful_s: float, transport: dict[str, Any]) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            def capture_signals(self) -> contextlib.AbstractContextManager[None]:
                return contextlib.nullcontext()

        config = uvicorn.Config(
            app, host=live_host, lifespan="on", log_level="warning", access_log=False,
            timeout_graceful_shutdown=graceful_s, **transport,
        )  # fmt: skip
        self.server = Quiet(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _spawner(
    scenario: Scenario,
    device: str,
    log_dir: Path | None,
    secret: str,
    steps_dir: Path | None = None,
    start_env: Callable[[str, str], dict[str, str]] | None = None,
) -> Callable[[ModelDeployment, str], Any]:
    """`start_env(model, replica)`: more environment for one start (a deploy fault's switch, runtime.faults)."""
    from runtime.processes import ReplicaProcess
    from runtime.replica.config import ReplicaConfig
    from runtime.replica.steps_spool import STEPS_FILE_ENV

    def spawn(model: ModelDeployment, name: str, placed: str | None = None) -> Any:
        """`placed`: the device from `live.devices` ("cpu", "cuda:N"); a CUDA device is the only one the replica
        sees (CUDA_VISIBLE_DEVICES), so its own `cuda` is that device."""
        config = ReplicaConfig.from_deployment(model, scenario.base_dir).model_copy(
            update={"transport": scenario.live.transport}
        )
        log_path = None if log_dir is None else log_dir / f"{name}.log"
        run_on, env = device, None
        if placed is not None:
            run_on = "cpu" if placed == "cpu" else "cuda"
            env = None if placed == "cpu" else {"CUDA_VISIBLE_DEVICES": placed.removeprefix("cuda:")}
        if steps_dir is not None:
            env = {**(env or {}), STEPS_FILE_ENV: str(steps_dir / f"{name}.csv")}
        if start_env is not None and (extra := start_env(model.name, name)):
            env = {**(env or {}), **extra}
        return ReplicaProcess.start(config, name=name, device=run_on, log_path=log_path, secret=secret, env=env)

    return spawn


class LiveStack:
    """The whole live system of one scenario; `await start()`, then `await stop()` (always, in a finally)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        port: int | None = None,
        device: str = "auto",
        out_dir: str | Path | None = None,
        settings: ControllerSettings | None = None,
        spawn: Callable[[ModelDeployment, str], Any] | None = None,
    ) -> None:
        self.scenario = scenario
        self.port = scenario.live.port if port is None else port
        self.device = device
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.settings = settings or controller_settings(scenario)  # given settings are used as they are
        self._spawn = spawn
        self.run_id = f"{scenario.name}-live-seed{scenario.seed}"
        self.replica_secret = new_secret()  # this run's: replicas answer only requests that carry it
        t0 = self.t0 = time.monotonic()  # the run's start; replicas' step times are shifted by it
        self.clock: Callable[[], float] = lambda: time.monotonic() - t0
        self.log = EventLog(self.clock, self._sink)
        self.controllers: dict[str, ModelController] = {}
        self.gateway: Any = None
        self.url = ""
        self._events_file: Any = None
        self._client: httpx.AsyncClient | None = None
        self._server: Any = None
        self._server_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.faults: Any = None  # runtime.faults.LiveFaults when the scenario has faults: armed by arm_faults()
        self.recorder: ListRecorder | None = None  # outputs.decisions, with out_dir

    # -- records ---------------------------------------------------------------------------------------------
    def _sink(self, ev: LiveEvent) -> None:
        if self._events_file is not None:
            self._events_file.write(json.dumps(dataclasses.asdict(ev)) + "\n")
            self._events_file.flush()

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "run_id": self.run_id,
            "time_s": self.clock(),
            "models": [c.status() for c in self.controllers.values()],
        }

    def _write_status(self) -> None:
        if self.out_dir is None:
            return
        tmp = self.out_dir / "serve.json.tmp"
        tmp.write_text(json.dumps(self.status(), indent=1))
        tmp.replace(self.out_dir / "serve.json")

    # -- start -----------------------------------------------------------------------------------------------
    def _keys(self) -> Any:
        from runtime.gateway.auth import KeyFileError, load_keys

        live = self.scenario.live
        try:
            keys = load_keys(live.api_keys_file, self.scenario.base_dir)
        except KeyFileError as err:
            raise ServeError(str(err)) from None
        if len(keys) == 0 and not live.allow_anonymous:
            raise ServeError(
                "no API keys: set $ODHSIM_API_KEYS (key:tenant:priority,...) or live.api_keys_file, "
                "or set live.allow_anonymous: true"
            )
        return keys

    async def start(self) -> None:
        try:
            from runtime.gateway import build_gateway
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ServeError(f"the live runtime needs the `live` extra (pip install -e '.[live]'): {err}") from None
        sc = self.scenario
        keys = self._keys()
        sock = _bind(sc.live.host, self.port)
        try:
            self.port = sock.getsockname()[1]
            host = f"[{sc.live.host}]" if ":" in sc.live.host else sc.live.host
            self.url = f"http://{host}:{self.port}"
            if self.out_dir is not None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / "logs").mkdir(exist_ok=True)
                self._events_file = (self.out_dir / "events.jsonl").open("w", encoding="utf-8")
            self.gateway = build_gateway(sc, keys=keys, clock=self.clock)
            tier = self.gateway.shared_tier
            if tier is not None and hasattr(tier, "on_change"):
                tier.on_change = self._shared_tier_changed
            self.gateway.replica_headers = secret_headers(self.replica_secret)
            self._client = httpx.AsyncClient(trust_env=False, timeout=10.0, headers=self.gateway.replica_headers)
            prober = HttpProber(self._client, test_timeout_s=60.0)
            log_dir = None if self.out_dir is None else self.out_dir / "logs"
            steps_dir = None if self.out_dir is None else self.out_dir / "steps"
            spawn = self._spawn or _spawner(
                sc, self.device, log_dir, self.replica_secret, steps_dir, start_env=self._start_env
            )
            streams = RngStreams(sc.seed)
            capacity = live_capacity(sc, streams)
            for m in sc.models:
                autoscaler, intervals = None, (2.0, 1.0)
                if m.autoscaling is not None:
                    autoscaler = build_autoscaler(m.autoscaling, streams.get(f"autoscaler.{m.name}"))
                    intervals = (m.autoscaling.interval_s, m.autoscaling.metrics_interval_s)
                self.controllers[m.name] = ModelController(
                    m, gateway=self.gateway, log=self.log, spawn=spawn, prober=prober, autoscaler=autoscaler,
                    intervals=intervals, settings=self.settings, on_change=self._write_status, spend=capacity.spend,
                    devices=capacity.devices, device_names=capacity.device_name,
                )  # fmt: skip
                capacity.spend.controllers.append(self.controllers[m.name])
            if sc.faults:
                from runtime.faults import LiveFaults

                self.faults = LiveFaults(
                    sc, log=self.log, controllers=self.controllers, gateway=self.gateway, client=self._client
                )
            share = sc.outputs.decisions_share
            if self.out_dir is not None and share > 0:  # decisions.parquet: the gateway core's and controllers'
                self.recorder = ListRecorder(share)
                self.gateway.record_decisions(self.recorder)
                for c in self.controllers.values():
                    c.core.recorder = self.recorder
            self.gateway.on_cold_request = self._cold
            self.gateway.on_record = self._reaction
            self.gateway.on_replica_failure = self._replica_failure
            transport = uvicorn_options(
                sc.live.transport, backstop_s=TRANSPORT_BACKSTOP_S, on_refused=self.gateway.metrics.transport_refused
            )
            self._server = _Server(self.gateway.app, sc.live.host, SHUTDOWN_GRACE_S, transport).server
            self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="uvicorn")
            while not self._server.started:
                if self._server_task.done():
                    raise ServeError(f"the gateway did not start: {self._server_task.exception()!r}")
                await asyncio.sleep(0.02)
        except BaseException:
            sock.close()
            raise
        for c in self.controllers.values():
            await c.start()
        self._write_status()

    def _shared_tier_changed(self, up: bool, detail: str) -> None:
        """The response cache's Redis tier went down or came back: an event (requests go on meanwhile)."""
        self.log.event("shared_tier_up" if up else "shared_tier_down", "", "", detail[:300])

    def _start_env(self, model: str, replica: str) -> dict[str, str]:
        """A replica start's deploy-fault switch, when a readiness_failure / load_oom fault holds (runtime.faults)."""
        return {} if self.faults is None else self.faults.start_env(model, replica)

    def _reaction(self, record: Any) -> None:
        """The gateway core's reactions to a failed attempt as events, as the simulator records them."""
        if record.kind in REACTION_RECORDS:
            self.log.event(record.kind, record.model, "", record.detail)

    def outlier_events(self) -> list[LiveEvent]:
        """The outlier detectors' ejections (`ejection`, detail: why) and returns (`ejection_end`), on the run's
        clock (the gateway's), as the simulator reports them."""
        if self.gateway is None:
            return []
        return [
            LiveEvent(t, "ejection" if what == "ejected" else "ejection_end", route.name, host, reason)
            for route in self.gateway.routes.values()
            if route.core.outlier is not None
            for t, host, what, reason in route.core.outlier.events
        ]

    def _cold(self, model: str) -> None:
        c = self.controllers.get(model)
        if c is not None:
            c.poke()

    def _replica_failure(self, model: str, name: str, reason: str) -> None:
        c = self.controllers.get(model)
        if c is not None:
            c.replica_failed(name, reason)

    def arm_faults(self) -> None:
        """Start the scenario's faults now (their times count from here); nothing without faults."""
        if self.faults is not None:
            self.faults.arm()

    async def wait_deployed(self, timeout_s: float | None = None) -> None:
        """Until every model's initial replicas have settled (ready, or failed once) or were rejected."""
        await asyncio.wait_for(asyncio.gather(*(c.deployed.wait() for c in self.controllers.values())), timeout_s)

    def server_failed(self) -> BaseException | None:
        task = self._server_task
        if task is None or not task.done():
            return None
        return task.exception() if not task.cancelled() else asyncio.CancelledError()

    # -- stop ------------------------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop accepting, let open requests finish, drain and stop every replica, write the records. Idempotent;
        every process is killed even when a step fails."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.faults is not None:  # every fault in force ends (an event) before the drain
                await self.faults.stop()
            if self._server is not None and self._server_task is not None:
                self._server.should_exit = True
                try:
                    await asyncio.wait_for(asyncio.shield(self._server_task), SHUTDOWN_GRACE_S + 10.0)
                except (TimeoutError, Exception):
                    self._server.force_exit = True
                    self._server_task.cancel()
                    with contextlib.suppress(BaseException):
                        await self._server_task
            await asyncio.gather(*(c.stop() for c in self.controllers.values()), return_exceptions=True)
        finally:
            for c in self.controllers.values():
                c.kill_all()
            if self._client is not None:
                await self._client.aclose()
            self.log.event("stop", "", "", "all replicas stopped")
            self._write_outputs()

    def _write_outputs(self) -> None:
        if self.out_dir is None or self.gateway is None:  # nothing ran
            return
        self._write_status()
        steps = self._read_steps()
        if self._events_file is not None:
            self._events_file.close()
            self._events_file = None
        empty = pd.DataFrame()
        decisions = self._decisions()  # before the events: it may log one (decision_ids)
        tagged = RunResult.tag(
            scenario_name=self.scenario.name, run_id=self.run_id, seed=self.scenario.seed, summary={},
            requests=empty, replicas=self.log.states_frame(), timeseries=empty, events=self._events_frame(),
            steps=steps, decisions=decisions,
        )  # fmt: skip
        tagged.events.to_parquet(self.out_dir / "events.parquet", index=False)
        tagged.replicas.to_parquet(self.out_dir / "replicas.parquet", index=False)
        if tagged.steps is not None:
            write_steps(tagged.steps, self.out_dir / "steps.parquet")
        if tagged.decisions is not None:
            write_decisions(tagged.decisions, self.out_dir / "decisions.parquet")

    def _decisions(self) -> pd.DataFrame | None:
        """The cores' decision records (outputs.decisions), breaker and ejection transitions placed among them, with
        the clients' request ids (`with_client_ids`; an event `decision_ids` when the ticket ids were kept)."""
        if self.recorder is None:
            return None
        frame = decisions_frame(merge_in_time(self.recorder.records, self.gateway.transitions()))
        frame, note = with_client_ids(frame, self.gateway.client_ids or {})
        if note:
            self.log.event("decision_ids", "", "", note)
        return frame

    def _events_frame(self) -> pd.DataFrame:
        """Every event in time order, the outlier detectors' ejections and returns included."""
        events = sorted([*self.log.events, *self.outlier_events()], key=lambda e: e.time_s)
        return pd.DataFrame([dataclasses.asdict(e) for e in events], columns=EVENT_COLUMNS)

    def _read_steps(self) -> pd.DataFrame | None:
        """The replicas' spooled engine steps as one table (times since the run's start); an unreadable step file
        is an event and leaves steps.parquet out."""
        from runtime.replica.steps_spool import SpoolError, read_spools

        assert self.out_dir is not None
        try:
            return read_spools(self.out_dir / "steps", self.t0)
        except (SpoolError, OSError) as err:
            self.log.event("steps_unreadable", "", "", str(err)[:300])
            return None


def ready_table(stack: LiveStack) -> Table:
    table = Table(title=f"{stack.scenario.name}: {stack.url}", header_style="bold")
    for col in ("model", "replica", "state", "url", "pid"):
        table.add_column(col)
    for c in stack.controllers.values():
        if c.rejection is not None:
            table.add_row(c.name, "-", "[red]rejected[/]", c.rejection, "")
        for r in c.replicas:
            if r.state == "gone":
                continue
            state = f"[green]{r.state}[/]" if r.state == READY else f"[yellow]{r.state}[/]"
            proc = r.proc
            table.add_row(c.name, r.name, state, proc.url if proc else "", str(proc.pid) if proc else "")
    return table


async def serve_async(
    scenario: Scenario,
    *,
    port: int | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    duration_s: float | None = None,
    console: Console | None = None,
    settings: ControllerSettings | None = None,
) -> int:
    """Run until SIGINT / SIGTERM or `duration_s`; then stop everything. Returns the exit code (0)."""
    console = console or Console()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    stack = LiveStack(scenario, port=port, device=device, out_dir=out_dir, settings=settings)
    try:
        await stack.start()
        models = ", ".join(stack.controllers)
        console.print(f"[bold]odhsim serve[/]: gateway on [cyan]{stack.url}[/] (models: {models}); deploying ...")

        async def announce() -> None:
            await stack.wait_deployed()
            stack.arm_faults()  # the scenario's fault times count from the moment the initial replicas settled
            console.print(ready_table(stack))
            console.print("Ctrl-C (SIGINT) or SIGTERM stops: drain, then stop every replica.")

        announcer = asyncio.create_task(announce())
        deadline = None if duration_s is None else loop.time() + duration_s
        while not stop.is_set():
            if stack.server_failed() is not None:
                raise ServeError(f"the gateway stopped unexpectedly: {stack.server_failed()!r}")
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            if deadline is not None and loop.time() >= deadline:
                break
        announcer.cancel()
        console.print("stopping: draining requests, then stopping every replica ...")
    finally:
        await stack.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    restarts = sum(r.lifecycle.restarts for c in stack.controllers.values() for r in c.replicas)
    where = f"; events.parquet and replicas.parquet in {out_dir}/" if out_dir is not None else ""
    console.print(f"stopped: {len(stack.log.events)} events, {restarts} restart(s){where}")
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(
    scenario: Scenario,
    *,
    port: int | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    duration_s: float | None = None,
    console: Console | None = None,
) -> int:
    """`odhsim serve`: run the scenario live in one event loop (uvloop when installed); the exit code."""
    if device not in ("auto", "cpu", "cuda"):
        raise ServeError(f"--device must be auto, cpu or cuda, got {device!r}")
    if duration_s is not None and duration_s <= 0:
        raise ServeError(f"--duration must be > 0, got {duration_s}")
    refused = live_refusals(scenario)
    if refused:
        raise ServeError("the live engine cannot serve this scenario: " + "; ".join(refused))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            serve_async(scenario, port=port, device=device, out_dir=out_dir, duration_s=duration_s, console=console)
        )
