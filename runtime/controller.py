"""The live model controller: the simulator's deploy flow, autoscaler loop and drains, applied to real processes.

Per model (as `odhsim.sim.controller` does in simulated time):
- deploy: `ModelDeployment.deploy_verdict()` plus a `live:` section; a rejection is an event with the reason and
  the model's requests fail with it;
- each replica: pending -> loading (process started, waiting for /v2/health/ready) -> testing (one real inference,
  `runtime.readiness`) -> ready (only then `gateway.add_replica`), every move checked by `policies.lifecycle` and
  recorded as an event;
- a supervisor task per replica notices its process exiting (polling, or woken by the gateway's
  `on_replica_failure`), removes it from the gateway, moves it to failed and restarts it in place after the
  CrashLoopBackOff delay (`policies.lifecycle.RestartBackoff`), re-running the readiness test before traffic;
- autoscaling: the same `build_autoscaler` object, observed every `metrics_interval_s` from
  `gateway.scaling_metrics`, deciding every `interval_s` (and at once on a cold request); scale-up starts
  processes, scale-down cancels starting replicas first, then drains the newest ready one: no new requests,
  wait until `gateway.in_flight` is 0 (or `drain_timeout_s`), remove, terminate, so scaling drops nothing;
- stop: drain and terminate every process (SIGTERM, then SIGKILL), whatever happened before.

Nothing here imports the replica or gateway packages: the process spawner, the prober and the gateway are passed
in, so the controller is tested against fakes and wired to the real pieces by `runtime.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd

from odhsim.scenario.deployment import ModelDeployment
from policies.autoscaling.types import Autoscaler, ScalingMetrics
from policies.lifecycle.states import (
    DRAINING,
    FAILED,
    GONE,
    LOADING,
    PENDING,
    READY,
    RESTARTING,
    TESTING,
    Lifecycle,
    RestartBackoff,
)
from runtime.readiness import ReadinessError

EVENT_COLUMNS = ["time_s", "kind", "model", "replica", "detail"]
STATE_COLUMNS = ["time_s", "model", "replica", "state"]
STARTING = frozenset({PENDING, LOADING, TESTING})


# -- records ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One row of events.parquet (the simulator's columns)."""

    time_s: float
    kind: str
    model: str
    replica: str
    detail: str


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One row of replicas.parquet: a replica entered `state` at `time_s`."""

    time_s: float
    model: str
    replica: str
    state: str


class EventLog:
    """Events and replica states of a live run, timed by the run's clock; `sink` sees each event as it happens
    (serve appends them to events.jsonl, so a run can be followed while it goes)."""

    def __init__(self, clock: Callable[[], float], sink: Callable[[LiveEvent], None] | None = None) -> None:
        self.clock = clock
        self.sink = sink
        self.events: list[LiveEvent] = []
        self.states: list[StateRecord] = []

    def event(self, kind: str, model: str, replica: str = "", detail: str = "") -> LiveEvent:
        ev = LiveEvent(self.clock(), kind, model, replica, detail)
        self.events.append(ev)
        if self.sink is not None:
            self.sink(ev)
        return ev

    def state(self, model: str, replica: str, state: str) -> None:
        self.states.append(StateRecord(self.clock(), model, replica, state))

    def events_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(e) for e in self.events], columns=EVENT_COLUMNS)

    def states_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(s) for s in self.states], columns=STATE_COLUMNS)


# -- what the controller needs from the other pieces ------------------------------------------------------------
class ProcessLike(Protocol):
    """runtime.processes.ReplicaProcess as the controller uses it."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def alive(self) -> bool: ...

    def terminate(self, grace_s: float = ...) -> Any: ...

    def kill(self) -> Any: ...


class ProberLike(Protocol):
    """Waits for a replica's health, then runs its readiness test (runtime.readiness.HttpProber)."""

    async def wait_healthy(self, model: ModelDeployment, proc: ProcessLike, timeout_s: float) -> float: ...

    async def test(self, model: ModelDeployment, base_url: str) -> str: ...


SpawnFn = Callable[[ModelDeployment, str], ProcessLike]
"""Start the replica process named `name` of `model` (non-blocking: it returns once the process is launched)."""


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a gateway method that may be sync or async."""
    out = fn(*args)
    if inspect.isawaitable(out):
        out = await out
    return out


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "process stopped answering"
    if returncode < 0:
        return f"process killed by signal {-returncode}"
    return f"process exited with code {returncode}"


@dataclass(frozen=True)
class ControllerSettings:
    """poll_s: how often a replica process is checked for life; stop_grace_s: SIGTERM to SIGKILL; shutdown_drain_s:
    the most a shutdown waits for a replica's requests (the model's drain_timeout_s bounds scale-down drains)."""

    poll_s: float = 0.1
    stop_grace_s: float = 5.0
    shutdown_drain_s: float = 10.0
    backoff: RestartBackoff = field(default_factory=RestartBackoff)


class LiveReplica:
    """One replica: its lifecycle, its current process (replaced on a restart in place) and its supervisor."""

    def __init__(self, name: str, index: int, lifecycle: Lifecycle) -> None:
        self.name = name
        self.index = index
        self.lifecycle = lifecycle
        self.proc: ProcessLike | None = None
        self.task: asyncio.Task[None] | None = None
        self.retiring = False
        self.ready_at = math.nan
        self.attempt = 0  # CrashLoopBackOff attempt of the latest restart
        self.tests_passed = 0
        self.wake = asyncio.Event()  # the gateway saw a connect error: check the process now
        self.settled = asyncio.Event()  # first boot finished (ready or failed)

    @property
    def state(self) -> str:
        return self.lifecycle.state

    def status(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "name": self.name,
            "state": self.state,
            "url": proc.url if proc is not None else None,
            "pid": proc.pid if proc is not None else None,
            "restarts": self.lifecycle.restarts,
            "tests_passed": self.tests_passed,
        }


class ModelController:
    """Deploy flow, restarts, autoscaling and drains of one model's replica processes."""

    def __init__(
        self,
        model: ModelDeployment,
        *,
        gateway: Any,
        log: EventLog,
        spawn: SpawnFn,
        prober: ProberLike,
        autoscaler: Autoscaler | None = None,
        intervals: tuple[float, float] = (2.0, 1.0),
        settings: ControllerSettings | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.gateway = gateway
        self.log = log
        self.clock = log.clock
        self.spawn = spawn
        self.prober = prober
        self.autoscaler = autoscaler
        self.decide_every_s, self.observe_every_s = intervals
        self.settings = settings or ControllerSettings()
        self.on_change = on_change
        self.replicas: list[LiveReplica] = []
        self.rejection: str | None = None
        self.last_desired = model.replicas
        self.deployed = asyncio.Event()
        self._count = 0
        self._poke = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False

    @property
    def name(self) -> str:
        return self.model.name

    # -- records ------------------------------------------------------------------------------------------------
    def _move(self, r: LiveReplica, to: str, detail: str = "") -> None:
        """A lifecycle transition (illegal ones raise): replicas table + a `state` event."""
        before = r.state
        r.lifecycle.transition(self.clock(), to, detail)
        self.log.state(self.name, r.name, to)
        self.log.event("state", self.name, r.name, f"{before} -> {to}" + (f": {detail}" if detail else ""))
        if self.on_change is not None:
            self.on_change()

    def ready(self) -> list[LiveReplica]:
        return [r for r in self.replicas if r.state == READY and not r.retiring]

    def active(self) -> list[LiveReplica]:
        """Replicas counted toward the desired number: everything not retiring and not gone."""
        return [r for r in self.replicas if not r.retiring and r.state != GONE]

    def status(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "rejected": self.rejection,
            "replicas": [r.status() for r in self.replicas if r.state != GONE],
        }

    def _background(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- deploy ----------------------------------------------------------------------------------------------
    def verdict(self) -> tuple[bool, str]:
        if self.model.live is None:
            return False, "rejected: no `live:` section (the torch model its replicas run)"
        return self.model.deploy_verdict()

    async def start(self) -> None:
        """Validate, then start the initial replicas; the autoscaler takes over once they have settled (ready
        or failed once), as the simulator's controller starts with its initial replicas ready."""
        approved, reason = self.verdict()
        self.log.event("deploy", self.name, "", reason)
        if self.model.canary is not None:  # said, not silently dropped: the live engine serves one revision
            detail = f"canary {self.model.canary.version} is simulated only; serving {self.model.version}"
            self.log.event("canary", self.name, "", detail)
        if not approved:
            self.rejection = f"model '{self.name}' {reason}"
            reject = getattr(self.gateway, "reject_model", None)
            if reject is not None:
                await _call(reject, self.name, self.rejection)
            self.deployed.set()
            return
        initial = [self._add() for _ in range(self.model.replicas)]
        self._background(self._after_deploy(initial), f"deploy {self.name}")

    async def _after_deploy(self, initial: list[LiveReplica]) -> None:
        await asyncio.gather(*(r.settled.wait() for r in initial))
        ready = sum(r.state == READY for r in initial)
        self.log.event("deployed", self.name, "", f"{ready}/{len(initial)} initial replica(s) ready")
        self.deployed.set()
        if self.autoscaler is not None:
            await self._autoscale()

    def _add(self) -> LiveReplica:
        name = f"{self.name}-{self.model.version}-{self._count}"
        r = LiveReplica(name, self._count, Lifecycle(self.clock(), name, initial=PENDING))
        self._count += 1
        self.replicas.append(r)
        self.log.state(self.name, name, PENDING)
        self.log.event("state", self.name, name, "-> pending")
        r.task = self._background(self._supervise(r), f"supervise {name}")
        return r

    # -- one replica's life ------------------------------------------------------------------------------------
    async def _supervise(self, r: LiveReplica) -> None:
        """Boot, serve until the process exits, back off, restart in place; until cancelled (retire / stop)."""
        while True:
            failure = await self._boot(r)
            r.settled.set()
            if failure is None:
                await self._watch(r)
            ran_for = self.clock() - r.ready_at if r.ready_at == r.ready_at else 0.0
            r.attempt = self.settings.backoff.attempt_after(r.attempt, ran_for)
            delay = self.settings.backoff.next_delay(r.attempt)
            self._move(r, RESTARTING, f"restart {r.attempt} after {delay:g} s (CrashLoopBackOff)")
            await asyncio.sleep(delay)

    async def _boot(self, r: LiveReplica) -> str | None:
        """pending/restarting -> loading -> testing -> ready (added to the gateway); None, or why it failed."""
        assert self.model.live is not None
        r.ready_at = math.nan
        try:
            r.proc = self.spawn(self.model, r.name)  # synchronous: a cancel can never orphan a started process
        except Exception as err:  # a bad config or no free port: the replica fails like a crashing container
            self._move(r, LOADING, "process start")
            return await self._fail(r, f"could not start the process: {type(err).__name__}: {err}")
        self._move(r, LOADING, f"pid {r.proc.pid} at {r.proc.url}")
        try:
            waited = await self.prober.wait_healthy(self.model, r.proc, self.model.live.startup_timeout_s)
            self._move(r, TESTING, f"healthy after {waited:.1f} s")
            detail = await self.prober.test(self.model, r.proc.url)
        except ReadinessError as err:
            return await self._fail(r, str(err))
        except Exception as err:
            return await self._fail(r, f"readiness test error: {type(err).__name__}: {err}")
        if not r.proc.alive():
            return await self._fail(r, exit_reason(r.proc.returncode))
        r.tests_passed += 1
        self.log.event("test", self.name, r.name, detail)
        self._move(r, READY)
        r.ready_at = self.clock()
        await _call(self.gateway.add_replica, self.name, r.name, r.proc.url)
        return None

    async def _fail(self, r: LiveReplica, reason: str) -> str:
        self._move(r, FAILED, reason)
        await self._terminate(r.proc)
        return reason

    async def _watch(self, r: LiveReplica) -> None:
        """Serve until the process exits; then out of the gateway and into `failed`."""
        assert r.proc is not None
        while r.proc.alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.wake.wait(), self.settings.poll_s)
            r.wake.clear()
        reason = exit_reason(r.proc.returncode)
        await _call(self.gateway.remove_replica, self.name, r.name)
        self.log.event("crash", self.name, r.name, f"{reason} after {self.clock() - r.ready_at:.1f} s ready")
        self._move(r, FAILED, reason)

    def replica_failed(self, name: str, reason: str) -> None:
        """The gateway's on_replica_failure: have that replica's supervisor check its process now."""
        for r in self.replicas:
            if r.name == name and r.state == READY:
                r.wake.set()

    # -- scaling -----------------------------------------------------------------------------------------------
    def metrics(self, now: float) -> ScalingMetrics:
        active = self.active()
        ready = sum(r.state == READY for r in active)
        return self.gateway.scaling_metrics(self.name, now, ready, len(active) - ready)

    def poke(self) -> None:
        """The gateway holds a request for this model and no replica is ready: decide now (scale from zero)."""
        self._poke.set()

    async def _autoscale(self) -> None:
        """Observe every metrics interval, decide every decision interval (and when poked)."""
        assert self.autoscaler is not None
        next_decision = self.clock()
        while True:
            now = self.clock()
            self.autoscaler.observe(self.metrics(now))
            poked = self._poke.is_set()
            if now >= next_decision or poked:
                self._poke.clear()
                decision = self.autoscaler.decide(now)
                self.scale_to(decision.desired, decision.reason)
                while next_decision <= now:
                    next_decision += self.decide_every_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.observe_every_s)

    def scale_to(self, desired: int, reason: str) -> None:
        """Start replicas up to `desired`, or retire the surplus: starting ones first (newest first), then failed
        ones, then drain the newest ready ones."""
        if self._stopped or self.rejection is not None:
            return
        active = self.active()
        if desired != self.last_desired:
            self.log.event("scale", self.name, "", f"{self.last_desired} -> {desired}: {reason}")
            self.last_desired = desired
        for _ in range(desired - len(active)):
            self._add()
        surplus = len(active) - desired
        if surplus <= 0:
            return
        newest = sorted(active, key=lambda r: -r.index)
        order = (
            [r for r in newest if r.state in STARTING]
            + [r for r in newest if r.state in (FAILED, RESTARTING)]
            + [r for r in newest if r.state == READY]
        )
        for r in order[:surplus]:
            r.retiring = True
            self._background(self._retire(r, "scaled down", self.model.drain_timeout_s), f"retire {r.name}")

    async def _retire(self, r: LiveReplica, why: str, drain_s: float) -> None:
        r.retiring = True
        await self._stop_supervisor(r)
        r.settled.set()
        if r.state == READY:
            await self._drain(r, why, drain_s)
        else:
            await self._discard(r, why)

    async def _stop_supervisor(self, r: LiveReplica) -> None:
        task = r.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self, r: LiveReplica, why: str, drain_s: float) -> None:
        """No new requests; the ones it holds finish (or fail after drain_s); then it goes."""
        assert r.proc is not None
        await _call(self.gateway.drain_replica, self.name, r.name)
        self._move(r, DRAINING, why)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while r.proc.alive() and self.gateway.in_flight(self.name, r.name) > 0 and loop.time() < deadline:
            await asyncio.sleep(self.settings.poll_s)
        held = self.gateway.in_flight(self.name, r.name)
        crashed = not r.proc.alive()
        await _call(self.gateway.remove_replica, self.name, r.name)
        await self._terminate(r.proc)
        if crashed:
            detail = f"{exit_reason(r.proc.returncode)} while draining ({held} request(s) held)"
        elif held:
            detail = f"drain timeout ({drain_s:g} s): {held} request(s) still held"
        else:
            detail = "drained"
        self._move(r, GONE, detail)

    async def _discard(self, r: LiveReplica, why: str) -> None:
        """A replica serving nothing (starting, failed, backing off, or a cut-short drain) leaves at once."""
        await self._terminate(r.proc)
        if r.state == DRAINING:
            await _call(self.gateway.remove_replica, self.name, r.name)
        if r.state != GONE:
            self._move(r, GONE, why)

    async def _terminate(self, proc: ProcessLike | None) -> None:
        """SIGTERM, then SIGKILL after the grace period, off the event loop (the gateway keeps serving)."""
        if proc is None or not proc.alive():
            return
        grace = self.settings.stop_grace_s
        result = await asyncio.to_thread(proc.terminate, grace)
        if inspect.isawaitable(result):
            await result

    # -- stop --------------------------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop autoscaling, drain what is ready (bounded), terminate every process. Safe to call twice."""
        self._stopped = True
        current = asyncio.current_task()
        cancelled = [t for t in self._tasks if t is not current and not t.get_name().startswith("supervise ")]
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        drain_s = min(self.model.drain_timeout_s, self.settings.shutdown_drain_s)
        left = [r for r in self.replicas if r.state != GONE]
        results = await asyncio.gather(*(self._retire(r, "shutdown", drain_s) for r in left), return_exceptions=True)
        self.kill_all()
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                self.log.event("error", self.name, "", f"during shutdown: {type(res).__name__}: {res}")

    def kill_all(self) -> None:
        """Last resort (exceptions, interpreter exit): SIGKILL every process still running. Never raises."""
        for r in self.replicas:
            proc = r.proc
            if proc is None:
                continue
            with contextlib.suppress(Exception):
                if proc.alive():
                    proc.kill()
