"""The scenario's `faults:` done for real by `odhsim serve`: the same windows the simulator reads
(`odhsim.scenario.faults.fault_windows`, each fault's own stream `faults/<index>`), timed from the moment the
faults are armed (serve arms them once every model's initial replicas have settled, the replay tool just before
its first request), each start and end a `fault` event in events.parquet.

How each kind is made real (and why there):
- replica_crash: SIGKILL of the replica's process; the controller sees it exit, takes it out of the gateway and
  restarts it in place after its CrashLoopBackOff delay and a readiness test (its `crash` and `state` events).
- error_rate / slow_replica: the replica's fault switch (`POST /odhsim/faults`, runtime.replica.faults) behind the
  run's replica secret: a share of inference requests answered `status` at once, drawn from a seed the fault's
  stream `faults/<index>/draws` gives; engine steps stretched to `factor` times their measured duration. A
  replica whose process is replaced while the fault holds gets it again before it takes traffic.
- network: in the gateway's upstream layer (runtime.gateway.upstream.LinkFault, read by the forwarder and the
  scraper), not a TCP proxy: a proxy would put a hop and a copy of every byte on every replica's path for the
  whole run, faulted or not, and re-pointing the gateway at a proxy mid-run would drop its pooled connections;
  the upstream layer is where the gateway meets "the network" to that replica and costs one attribute test when
  nothing is faulted. Latency and jitter (stream `faults/<index>/draws`) delay each way of an attempt (request
  out, answer's first byte back) and each scrape; a partition fails attempts as connect failures after the
  connect timeout and loses scrapes. What it does not model: per-packet delay inside a long stream.
- cache_down: `odhsim serve` does not start a Redis (live.redis_url points at one), so the gateway's connection
  to it is blocked (runtime.gateway.shared_tier: every call fails as a refused connection); the tier goes down and
  comes back as it would for a dead server (`shared_tier_down` / `shared_tier_up` events).
- stale_metrics: the gateway's scrapes of the model's replicas are lost; the router keeps the last numbers.
- readiness_failure / load_oom: every replica start (a restart in place or a scale-up) that begins inside a window
  gets `$ODHSIM_FAULT_START` (runtime.replica.faults): its model load fails as an out-of-memory error (the
  process exits), or it answers every inference 503 so its readiness test fails; either way the controller fails
  it and restarts it after its CrashLoopBackOff; the first start after the window succeeds. A window with no
  length arms one failure (the model's next start), as in the simulator (odhsim.sim.faults_infra).
- node_failure and download_failure / download_timeout are refused by `odhsim validate --engine live` and
  `odhsim serve` (odhsim.scenario.checks.LIVE_FAULT_REFUSALS says why for each).

Streams and targets as the simulator's (odhsim.sim.faults): windows from `faults/<index>` alone, a replica fault
with `replica: null` picks from `faults/<index>/target`, `replica: k` is the k-th ready replica of the model by name
when the window starts (none: the window is `skipped`, with why). Events: `fault` rows whose detail is
`<label>: <kind> on <target>: start | end | skipped (note)`, the simulator's format.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from odhsim.rng import RngStreams
from odhsim.scenario.faults import FaultSpec, fault_windows, pick_target
from odhsim.scenario.model import Scenario
from runtime.controller import EventLog, ModelController
from runtime.gateway.upstream import LinkFault
from runtime.replica.faults import CONTROL_PATH

FAULT_EVENT = "fault"


@dataclass
class _Switch:
    """What the replica fault switch of one replica should hold (error and/or slow), by fault label."""

    error: dict[str, dict[str, Any]] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The control body: the latest error fault and the largest slow-down in force (null: none)."""
        error = next(reversed(self.error.values())) if self.error else None
        slow = {"factor": max(self.slow.values())} if self.slow else None
        return {"error": error, "slow": slow}


class LiveFaults:
    """One task per fault of the scenario, started by `arm()`, ended (every fault in force undone) by `stop()`."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        log: EventLog,
        controllers: dict[str, ModelController],
        gateway: Any,
        client: httpx.AsyncClient,
    ) -> None:
        self.scenario = scenario
        self.log = log
        self.clock = log.clock
        self.controllers = controllers
        self.gateway = gateway
        self.client = client  # carries the run's replica secret
        self.origin: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._undo: dict[int, Callable[[], Awaitable[None]]] = {}  # the faults in force, by index
        self._switches: dict[tuple[str, str], _Switch] = {}
        self._stale_by: dict[str, set[str]] = {}
        self._starts: dict[str, list[list[Any]]] = {}  # deploy faults by model: [kind, label, active, armed]
        for name, c in controllers.items():
            c.before_ready = self._reapplier(name)

    # -- schedule --------------------------------------------------------------------------------------------
    def arm(self) -> None:
        """Start the faults' clock now (the scenario's times count from here)."""
        if self.origin is not None or not self.scenario.faults:
            return
        self.origin = self.clock()
        self.log.event("faults_armed", "", "", f"{len(self.scenario.faults)} fault(s); times count from here")
        streams = RngStreams(self.scenario.seed)
        for i, spec in enumerate(self.scenario.faults):
            task = asyncio.get_running_loop().create_task(self._run(i, spec, streams), name=f"fault {spec.label(i)}")
            self._tasks.append(task)

    async def _sleep_until(self, t_s: float) -> None:
        assert self.origin is not None
        await asyncio.sleep(max(0.0, self.origin + t_s - self.clock()))

    async def _run(self, index: int, spec: FaultSpec, streams: RngStreams) -> None:
        target = streams.get(f"faults/{index}/target")
        draws = streams.get(f"faults/{index}/draws")
        label = spec.label(index)
        for start, end in fault_windows(spec, streams.get(f"faults/{index}")):
            await self._sleep_until(start)
            if end == start and spec.kind in ("readiness_failure", "load_oom"):
                self._deploy(spec, label, instant=True)
                continue
            try:
                undo = await self._begin(spec, label, target, draws)
            except Exception as err:  # the fault could not be injected: said, and the schedule goes on
                self._event(spec, label, spec.model or "", "skipped", f"could not inject: {type(err).__name__}: {err}")
                undo = None
            if undo is None or end == start:
                continue
            self._undo[index] = undo
            if math.isinf(end):
                return  # holds until the run stops
            await self._sleep_until(end)
            self._undo.pop(index, None)
            await undo()

    async def stop(self) -> None:
        """Cancel the schedules and undo every fault in force (each end is an event, 'the run stopped')."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        undos, self._undo = list(self._undo.values()), {}
        for undo in undos:
            with contextlib.suppress(Exception):
                await undo()

    # -- targets ---------------------------------------------------------------------------------------------
    def _pick(self, spec: FaultSpec, rng: np.random.Generator) -> tuple[Any | None, str]:
        """The ready replica a replica fault hits now (see the module doc), or None and why."""
        assert spec.model is not None
        ready = sorted(self.controllers[spec.model].ready(), key=lambda r: r.name)
        return pick_target(spec, ready, rng)

    def _event(self, spec: FaultSpec, label: str, target: str, phase: str, note: str = "") -> None:
        """A `fault` row in the simulator's format: `<label>: <kind> on <target>: <phase> (note)`."""
        replica = target if spec.kind not in ("cache_down", "stale_metrics") else ""
        detail = f"{label}: {spec.kind} on {target}: {phase}" + (f" ({note})" if note else "")
        self.log.event(FAULT_EVENT, spec.model or "", replica, detail)

    # -- the kinds -------------------------------------------------------------------------------------------
    async def _begin(
        self, spec: FaultSpec, label: str, target: np.random.Generator, draws: np.random.Generator
    ) -> Callable[[], Awaitable[None]] | None:
        """Inject the fault; the coroutine function that ends it (None: nothing to end). `target` picks a replica,
        `draws` gives the error seed and the jitter."""
        kind = spec.kind
        if kind in ("replica_crash", "error_rate", "slow_replica", "network"):
            r, why = self._pick(spec, target)
            if r is None:
                self._event(spec, label, spec.model or "", "skipped", why)
                return None
            if kind == "replica_crash":
                self._crash(spec, label, r)
                return None
            if kind == "network":
                return self._network(spec, label, r.name, draws)
            return await self._switch(spec, label, r.name, draws)
        if kind == "cache_down":
            return self._cache_down(spec, label)
        if kind == "stale_metrics":
            return self._stale(spec, label)
        if kind in ("readiness_failure", "load_oom"):
            return self._deploy(spec, label)
        raise ValueError(f"{kind} cannot be injected live (odhsim.scenario.checks.LIVE_FAULT_REFUSALS)")

    def _crash(self, spec: FaultSpec, label: str, r: Any) -> None:
        proc = r.proc
        if proc is None or not proc.alive():
            self._event(spec, label, r.name, "skipped", f"no process to kill ({r.state})")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        self._event(spec, label, r.name, "start", f"SIGKILL pid {proc.pid}")
        r.wake.set()  # the supervisor looks at once instead of at its next poll

    async def _switch(
        self, spec: FaultSpec, label: str, replica: str, draws: np.random.Generator
    ) -> Callable[[], Awaitable[None]]:
        assert spec.model is not None
        key = (spec.model, replica)
        sw = self._switches.setdefault(key, _Switch())
        if spec.kind == "error_rate":
            seed = int(draws.integers(2**62))
            sw.error[label] = {"share": spec.share, "status": spec.status, "seed": seed}
            what = f"share {spec.share:g} answered {spec.status} (seed {seed})"
        else:
            sw.slow[label] = float(spec.factor or 1.0)
            what = f"steps x{spec.factor:g}"
        self._event(spec, label, replica, "start", what)
        await self._push(spec.model, replica)

        async def end() -> None:
            sw.error.pop(label, None)
            sw.slow.pop(label, None)
            self._event(spec, label, replica, "end")
            await self._push(spec.model or "", replica)

        return end

    def _reapplier(self, model: str) -> Callable[[str, str], Awaitable[None]]:
        async def reapply(replica: str, url: str) -> None:
            sw = self._switches.get((model, replica))
            if sw is not None and (sw.error or sw.slow):
                await self._post(url, sw.body())
                self.log.event("fault_reapplied", model, replica, f"to its new process: {sw.body()}")

        return reapply

    async def _push(self, model: str, replica: str) -> None:
        """Send the replica its switch's state, if its process is up (a restarting one gets it before traffic)."""
        r = next((r for r in self.controllers[model].replicas if r.name == replica), None)
        if r is None or r.proc is None or not r.proc.alive():
            return
        try:
            await self._post(r.proc.url, self._switches[(model, replica)].body())
        except httpx.HTTPError as err:  # it may be dying: the re-apply hook covers its next process
            self.log.event("error", model, replica, f"fault switch not reached: {type(err).__name__}")

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        resp = await self.client.post(f"{url}{CONTROL_PATH}", json=body, timeout=5.0)
        if resp.status_code != 200:
            raise RuntimeError(f"{CONTROL_PATH} answered {resp.status_code}: {resp.text[:200]}")

    def _network(
        self, spec: FaultSpec, label: str, replica: str, rng: np.random.Generator
    ) -> Callable[[], Awaitable[None]]:
        assert spec.model is not None
        key = (spec.model, replica)
        link = LinkFault(label, spec.latency_s, spec.jitter_s, spec.partition, rng)
        self._set_link(key, link)
        what = "partition" if spec.partition else f"latency {spec.latency_s:g} s + jitter {spec.jitter_s:g} s"
        self._event(spec, label, replica, "start", what)

        async def end() -> None:
            if self.gateway.scrapers.links.get(key) is link:
                self._set_link(key, None)
            self._event(spec, label, replica, "end")

        return end

    def _set_link(self, key: tuple[str, str], link: LinkFault | None) -> None:
        links = self.gateway.scrapers.links
        if link is None:
            links.pop(key, None)
        else:
            links[key] = link
        u = self.gateway.routes[key[0]].upstreams.get(key[1])
        if u is not None:
            u.link = link

    def _cache_down(self, spec: FaultSpec, label: str) -> Callable[[], Awaitable[None]] | None:
        tier = self.gateway.shared_tier
        where = "shared cache tier"
        if tier is None or not hasattr(tier, "blocked"):
            self._event(spec, label, where, "skipped", "the gateway has no shared cache tier (live.redis_url: null)")
            return None
        tier.blocked = label
        self._event(spec, label, where, "start", "the gateway's connection to Redis is blocked")

        async def end() -> None:
            if tier.blocked == label:
                tier.blocked = None
            self._event(spec, label, where, "end")

        return end

    def _stale(self, spec: FaultSpec, label: str) -> Callable[[], Awaitable[None]]:
        model = spec.model or ""
        holding = self._stale_by.setdefault(model, set())
        holding.add(label)
        self.gateway.scrapers.stale.add(model)
        self._event(spec, label, f"{model}'s scrapes", "start")

        async def end() -> None:
            holding.discard(label)
            if not holding:  # another stale_metrics fault on the model may still hold
                self.gateway.scrapers.stale.discard(model)
            self._event(spec, label, f"{model}'s scrapes", "end")

        return end

    # -- deploy faults: the starts inside a window fail ----------------------------------------------------------
    def _deploy(self, spec: FaultSpec, label: str, instant: bool = False) -> Callable[[], Awaitable[None]] | None:
        """A window of a readiness_failure / load_oom fault: starts inside it fail (an instant one: the next)."""
        model = spec.model or ""
        entries = self._starts.setdefault(model, [])
        entry = next((e for e in entries if e[1] == label), None)
        if entry is None:
            entry = [spec.kind, label, False, False]
            entries.append(entry)
        if instant:
            note = "already armed" if entry[3] else "the next replica start fails"
            entry[3] = True
            self._event(spec, label, model, "start", note)
            return None
        entry[2] = True
        self._event(spec, label, model, "start", "replica starts fail until its end")

        async def end() -> None:
            entry[2] = False
            self._event(spec, label, model, "end", "replica starts succeed again")

        return end

    def start_env(self, model: str, replica: str) -> dict[str, str]:
        """The environment of a replica start under the model's first deploy fault that holds (scenario order):
        `$ODHSIM_FAULT_START` (runtime.replica.faults); {} when none does. Each failed start is an event."""
        from runtime.replica.faults import START_FAULT_ENV

        for entry in self._starts.get(model, ()):
            kind, label, active, armed = entry
            if active or armed:
                entry[3] = False
                what = "its load runs out of GPU memory" if kind == "load_oom" else "its readiness test fails"
                self.log.event(FAULT_EVENT, model, replica, f"{label}: {kind} on {replica}: start fails ({what})")
                return {START_FAULT_ENV: f"{kind}:{label}"}
        return {}
