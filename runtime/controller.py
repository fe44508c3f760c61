"""The live model controller: the asyncio adapter of the controller core (`policies.controlplane`), applied to real
processes. The core decides (deploy verdict, what the autoscaler observes and when it decides, how many replicas
start within the budget, which ones leave, when a crashed one restarts); this module starts and stops processes,
probes readiness, watches for exits and records events.

Per model (as `odhsim.sim.controller` does in simulated time):
- deploy: `ModelDeployment.deploy_verdict()` plus a `live:` section; a rejection is an event with the reason and
  the model's requests fail with it;
- each replica: pending -> loading (process started, waiting for /v2/health/ready) -> testing (one real inference,
  `runtime.readiness`) -> ready (only then `gateway.add_replica`), every move checked by `policies.lifecycle` and
  recorded as an event;
- a supervisor task per replica notices its process exiting (polling, or woken by the gateway's
  `on_replica_failure`), removes it from the gateway, moves it to failed and restarts it in place after the
  CrashLoopBackOff delay (`policies.lifecycle.RestartBackoff`), re-running the readiness test before traffic;
- autoscaling: the same `build_autoscaler` object, ticked on the core's schedule with `gateway.load_snapshot`
  (observe every `metrics_interval_s`, decide every `interval_s` or at the next observation after a cold
  request); scale-up starts processes (placed on `live.devices` when declared), scale-down removes the core's
  victims: starting or failed ones at once, ready ones drained: no new requests, wait until `gateway.in_flight` is
  0 (or `drain_timeout_s`), remove, terminate, so scaling drops nothing;
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
from dataclasses import dataclass, field
from typing import Any

from odhsim import catalog
from odhsim.scenario.deployment import ModelDeployment
from policies.autoscaling.types import Autoscaler, ScalingMetrics
from policies.controlplane.capacity import DeviceSlots, Spend
from policies.controlplane.core import ControllerCore, ScalePlan
from policies.controlplane.deploy import DeployFacts, deploy_verdict
from policies.controlplane.restart import RestartPolicy
from policies.controlplane.victims import ReplicaView
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
from policies.placement.binpack import Placement
from runtime.controller_ports import ProberLike, ProcessLike, SpawnFn, _call, exit_reason
from runtime.live_records import EVENT_COLUMNS, STATE_COLUMNS, EventLog, LiveEvent, StateRecord
from runtime.readiness import ReadinessError

__all__ = [
    "EVENT_COLUMNS",
    "STATE_COLUMNS",
    "ControllerSettings",
    "EventLog",
    "LiveEvent",
    "ModelController",
    "StateRecord",
]


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
        self.placement: Placement | None = None  # the device slot it holds (with `live.devices`)
        self.device: str | None = None
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
            "device": self.device,
        }

    def view(self) -> ReplicaView:
        since = self.ready_at if self.state == READY else math.nan
        return ReplicaView(self.name, self.index, self.state, since, self.lifecycle.restarts)


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
        spend: Spend | None = None,
        devices: DeviceSlots | None = None,
        device_names: Callable[[str, int], str] | None = None,
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
        self.devices = devices
        self.device_names = device_names or (lambda node, index: f"{node}:{index}")
        self.core = ControllerCore(
            model.name,
            start=self.clock(),
            desired=model.replicas,
            intervals=intervals,
            autoscaler=autoscaler,
            restart=RestartPolicy(self.settings.backoff),
            spend=spend,
            usd_per_replica_hour=model.gpus_per_replica * catalog.gpu(model.gpu).price_per_gpu_hour,
        )
        self.deployed = asyncio.Event()
        self.before_ready: Callable[[str, str], Awaitable[None]] | None = None
        """Awaited with (replica name, url) after a replica passed its test, before it gets traffic: the live
        faults re-apply a fault that holds on a replica whose process was replaced (runtime.faults)."""
        self._count = 0
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
    @property
    def last_desired(self) -> int:
        return self.core.last_desired

    def committed_usd_per_hour(self) -> float:
        """What the budget counts: every replica not gone (holding a device or waiting for one)."""
        return sum(r.state != GONE for r in self.replicas) * self.core.usd_per_replica_hour

    def verdict(self) -> tuple[bool, str]:
        """The core's deploy verdict from the scenario's check, the `live:` section and the declared devices."""
        approved, reason = self.model.deploy_verdict()
        slots = self.devices.nodes() if self.devices is not None else []
        facts = DeployFacts(
            self.name, "live", approved, reason, self.model.live is not None,
            tuple(sorted({n.gpu_type for n in slots})), 1, sum(n.gpus_per_node for n in slots),
        )  # fmt: skip
        verdict = deploy_verdict(facts)
        return verdict.approved, verdict.reason

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
            decision = self.core.restart.on_failure(self.clock(), r.attempt, ran_for, r.retiring)
            if not decision.restart:
                return
            r.attempt, delay = decision.attempt, decision.delay_s
            self._move(r, RESTARTING, decision.reason)
            await asyncio.sleep(delay)
            self.log.event("restart", self.name, r.name, f"restart {r.attempt} after {delay:g} s back-off")

    async def _boot(self, r: LiveReplica) -> str | None:
        """pending/restarting -> loading -> testing -> ready (added to the gateway); None, or why it failed."""
        assert self.model.live is not None
        r.ready_at = math.nan
        if self.devices is not None and r.placement is None:
            await self._place(r)
        try:  # synchronous: a cancel can never orphan a started process
            r.proc = self.spawn(self.model, r.name) if r.device is None else self.spawn(self.model, r.name, r.device)
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
        if self.before_ready is not None:
            try:
                await self.before_ready(r.name, r.proc.url)
            except Exception as err:  # a fault switch that failed must not stop the replica serving
                self.log.event("error", self.name, r.name, f"before ready: {type(err).__name__}: {err}")
        self._move(r, READY)
        r.ready_at = self.clock()
        await _call(self.gateway.add_replica, self.name, r.name, r.proc.url)
        return None

    async def _place(self, r: LiveReplica) -> None:
        """A device slot from `live.devices` by the placement policy; wait in `pending` while none is free (it keeps
        the slot across restarts in place, as a pod keeps its node)."""
        assert self.devices is not None
        said = False
        while (placement := self.devices.place(None)) is None:
            if not said:
                self.log.event("pending", self.name, r.name, "no free device in live.devices")
                said = True
            await asyncio.sleep(self.settings.poll_s)
        node, indices = placement.stages[0]
        r.placement, r.device = placement, self.device_names(node, indices[0])
        self.log.event("placed", self.name, r.name, f"{r.device} ({node})")

    def _release(self, r: LiveReplica) -> None:
        if self.devices is not None and r.placement is not None:
            self.devices.release(r.placement)
            r.placement = None

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
    def views(self) -> list[ReplicaView]:
        return [r.view() for r in self.active()]

    def metrics(self, now: float) -> ScalingMetrics:
        """What the autoscaler would observe now (through the core's accumulator: rates over elapsed time)."""
        return self.core.accumulator.observe(self._snapshot(now))

    def _snapshot(self, now: float) -> Any:
        active = self.active()
        ready = sum(r.state == READY for r in active)
        return self.gateway.load_snapshot(self.name, now, ready, len(active) - ready)

    def poke(self) -> None:
        """The gateway holds a request for this model and no replica is ready: decide at the next observation."""
        self.core.poke()

    async def _autoscale(self) -> None:
        """Tick on the core's schedule: observe every metrics interval, decide when the core says so."""
        assert self.autoscaler is not None
        now = self.clock()
        self.core.begin(now, self._snapshot(now).arrivals)
        while True:
            now = self.clock()
            result = self.core.tick(now, self._snapshot(now), self.views())
            if result.plan is not None:
                self.apply(result.plan)
            await asyncio.sleep(max(0.0, self.core.schedule.next_observe - self.clock()))

    def scale_to(self, desired: int, reason: str) -> None:
        """Scale to `desired` as the core plans it (budget, victims)."""
        if self._stopped or self.rejection is not None:
            return
        self.apply(self.core.plan(desired, reason, self.views()))

    def apply(self, plan: ScalePlan) -> None:
        """Record the scale event, start what the budget allowed, say why the rest waits, retire the victims."""
        if self._stopped or self.rejection is not None:
            return
        if plan.scale_event is not None:
            self.log.event("scale", self.name, "", plan.scale_event)
        for _ in range(plan.start):
            self._add()
        if plan.budget_refusal is not None:
            self.log.event("budget", self.name, "", plan.budget_refusal)
        by_name = {r.name: r for r in self.replicas}
        for victim in plan.victims:
            r = by_name[victim.name]
            r.retiring = True
            self._background(self._retire(r, "scaled down", self.model.drain_timeout_s), f"retire {r.name}")

    async def _retire(self, r: LiveReplica, why: str, drain_s: float) -> None:
        r.retiring = True
        await self._stop_supervisor(r)
        r.settled.set()
        try:
            if r.state == READY:
                await self._drain(r, why, drain_s)
            else:
                await self._discard(r, why)
        finally:
            self._release(r)

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
