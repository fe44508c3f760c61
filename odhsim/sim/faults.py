"""Faults in the simulator, replica level: one SimPy process per fault of the scenario's `faults:` section reads
its windows (`odhsim.scenario.faults.fault_windows`, the schedule `odhsim serve` reads too) until the run's
horizon and injects each window, writing a `fault` row into events.parquet at its start and its end.

What each kind does here (node and deploy faults are odhsim.sim.faults_infra's):
- replica_crash: the model's controller crashes the replica (`ModelController.crash`): every request it holds ends
  as a failed attempt of kind `reset` whose reason names the fault, so the gateway core retries, falls back or
  fails it by its policy (one whose first token was already sent fails: `Gateway.connection_lost`); the replica
  restarts in place after its CrashLoopBackOff and readiness test.
- error_rate: each attempt dispatched to the replica while the fault holds is answered `status` with probability
  `share` (a draw from the fault's stream at dispatch), at once and without reaching the engine, as a vLLM server
  whose engine is dead or whose GPU is bad answers: an error from its API server, no tokens, no prefill
  (`ERROR_ANSWER_S` later; `odhsim serve` answers it the same way, before the engine). 502/503/504 are the
  core's `gateway-error`, other 5xx its `5xx`.
- slow_replica: every engine step starts `factor` times longer (an LLM replica's latency model scaled; a fixed
  replica's service times of requests that start in the window); a step or span already in flight keeps its time.
- network: each way of each attempt waits `latency_s` + uniform[0, `jitter_s`) from the fault's stream (the first
  token is late by the way back too); a `partition` fails a new attempt as `connect-failure` after
  `CONNECT_TIMEOUT_S` (an unanswered SYN), and an answer the replica sends while partitioned never arrives: the
  attempt fails as a `reset` when it would have finished (the replica did the work for nothing), unless its
  stream had begun before the partition (then the request fails: a started stream is not retried).
- cache_down: the response cache's shared tier raises on every read and write; the cache counts each as a
  `shared_errors` miss and the local tier keeps serving (the path a Redis outage takes live).
- stale_metrics: the model's replicas' scrapes stop: the router sees each one's last scraped metrics until the
  fault ends (a replica that joins meanwhile is scraped as usual).

Cost when no fault holds: none. The hooks are per replica instance, installed when a fault starts and removed when
it ends: `submit`, `on_finish` and `scraped_state` are shadowed by instance attributes, an LLM replica's `latency`
swapped, a fixed replica's `slowdown` set; nothing on the request path tests for faults.

Streams: the windows come from `faults/<index>` alone (so they stay the ones `odhsim serve` draws, whatever the
traffic); a replica fault with `replica: null` picks its target from `faults/<index>/target`, and the 5xx and
jitter draws come from `faults/<index>/draws`. `replica: k` is the k-th ready replica of the model by name when the
window starts; a window with no such replica records why (`skipped`) and injects nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any

import numpy as np
import simpy

from odhsim.profiles.coefficients import COEFFICIENT_FIELDS, CPU_FIELDS, LatencyModel
from odhsim.rng import RngStreams
from odhsim.scenario.faults import FaultSpec, fault_windows, pick_target
from odhsim.scenario.model import Scenario
from odhsim.sim.gateway import Gateway
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.request import STATUS_FAILED, SimRequest

SIM_KINDS = frozenset({"replica_crash", "error_rate", "slow_replica", "network", "cache_down", "stale_metrics"})
"""The kinds this module injects; the others (node and deploy faults) are odhsim.sim.faults_infra's."""
ERROR_ANSWER_S = 0.002
"""How long an injected 5xx takes: the replica's API server answering without its engine (an HTTP round trip)."""
CONNECT_TIMEOUT_S = 5.0
"""How long an attempt waits for a connection a partition never answers: Envoy's cluster connect_timeout default
(5 s), and the live gateway's (runtime.gateway.upstream.connect_timeout_s)."""
_GATEWAY_ERRORS = frozenset({502, 503, 504})
_TIME_FIELDS = (*(f for f in COEFFICIENT_FIELDS if f != "prefill_knee_tokens"), *CPU_FIELDS)


def slowed(latency: LatencyModel, factor: float) -> LatencyModel:
    """`latency` with every step `factor` times longer (each time coefficient scaled; the knee is a token count)."""
    return replace(latency, **{f: getattr(latency, f) * factor for f in _TIME_FIELDS})


class _ReplicaFaults:
    """The faults holding on one replica now, and the instance hooks that carry them out while any holds."""

    def __init__(self, env: simpy.Environment, replica: ReplicaBase, gateway: Gateway) -> None:
        self.env = env
        self.replica = replica
        self.gateway = gateway
        self.errors: list[tuple[str, float, int, np.random.Generator]] = []  # label, share, status, stream
        # label, latency, jitter, cut, stream, since (when the fault began)
        self.links: list[tuple[str, float, float, bool, np.random.Generator, float]] = []
        self.slow: list[float] = []
        engines = getattr(replica, "engines", None) or [replica]
        self.base_latency: list[Any] = [getattr(e, "latency", None) for e in engines]
        self.engines = engines
        self.on_finish = replica.on_finish  # the replica's own callback (to the gateway)
        self.installed = False

    def apply(self) -> None:
        """(Re)install the hooks for the faults now holding; remove them all when none holds."""
        r = self.replica
        factor = math.prod(self.slow)
        for engine, base in zip(self.engines, self.base_latency, strict=True):
            if base is not None:
                engine.latency = base if factor == 1.0 else slowed(base, factor)
        if hasattr(r, "slowdown"):
            r.slowdown = factor  # type: ignore[attr-defined]  # a fixed replica's service times
        wanted = bool(self.errors or self.links)
        if wanted and not self.installed:
            r.submit = self.submit  # type: ignore[method-assign]
            r.on_finish = self.finish
            self.installed = True
        elif not wanted and self.installed:
            del r.submit
            r.on_finish = self.on_finish
            self.installed = False

    # -- the hooks ------------------------------------------------------------------------------------------
    def _one_way_s(self) -> float:
        return sum(lat + (float(rng.uniform(0.0, jit)) if jit > 0.0 else 0.0) for _, lat, jit, _, rng, _ in self.links)

    def _fail_later(self, req: SimRequest, after_s: float, reason: str, kind: str) -> None:
        req.replica = self.replica.index
        ev = self.env.timeout(after_s)
        ev.callbacks.append(lambda _e: self.gateway.finish(req, self.env.now, STATUS_FAILED, reason, kind))

    def submit(self, req: SimRequest) -> None:
        """The gateway dispatches `req` here: a partition, an injected 5xx, or the link's delay, then the
        replica's own submit."""
        for label, _, _, cut, _, _ in self.links:
            if cut:
                why = f"fault {label}: network partition, no connection within {CONNECT_TIMEOUT_S:g} s"
                self._fail_later(req, CONNECT_TIMEOUT_S, why, "connect-failure")
                return
        for label, share, status, rng in self.errors:
            if rng.random() < share:
                kind = "gateway-error" if status in _GATEWAY_ERRORS else "5xx"
                took = self._one_way_s() + ERROR_ANSWER_S + self._one_way_s()
                self._fail_later(req, took, f"fault {label}: replica answered {status}", kind)
                return
        delay = self._one_way_s()
        if delay <= 0.0:
            type(self.replica).submit(self.replica, req)
            return
        req.replica = self.replica.index
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: self._arrive(req))

    def _arrive(self, req: SimRequest) -> None:
        """The request reached the replica after the link's delay: it may have died or left meanwhile."""
        r = self.replica
        if r.state not in ("ready", "draining"):
            why = f"replica {r.name} was {r.state} when the request arrived over a slow link"
            self.gateway.finish(req, self.env.now, STATUS_FAILED, why, "connect-failure")
            return
        type(r).submit(r, req)

    def finish(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        """The replica answered: the answer crosses the link (late, or lost behind a partition: tokens sent since
        the partition began never arrived, and the connection is found dead when the answer should have come)."""
        for label, _, _, cut, _, since in self.links:
            if cut:
                if req.first_token_s >= since:
                    req.first_token_s = math.nan  # the client never saw it
                why = f"fault {label}: network partition, the answer was lost"
                self.gateway.connection_lost(req, now, why)
                return
        delay = self._one_way_s()
        if delay <= 0.0:
            self.on_finish(req, now, status, reason)
            return
        if req.first_token_s == req.first_token_s:  # not NaN: the first token crossed the link too
            req.first_token_s += delay
        on_finish = self.on_finish
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: on_finish(req, self.env.now, status, reason))


class _DownTier:
    """A shared tier that cannot be reached: every call raises, as a Redis client does when the server is down."""

    def __init__(self, label: str) -> None:
        self.message = f"fault {label}: shared cache tier unreachable"

    def get(self, now: float, key: int) -> Any:
        raise ConnectionError(self.message)

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None) -> None:
        raise ConnectionError(self.message)


class FaultInjector:
    """Runs the scenario's simulator-level faults (one process each) and keeps what they changed."""

    def __init__(
        self,
        env: simpy.Environment,
        scenario: Scenario,
        gateway: Gateway,
        streams: RngStreams,
        events: list[dict[str, Any]],
        horizon_s: float,
    ) -> None:
        self.env = env
        self.scenario = scenario
        self.gateway = gateway
        self.streams = streams
        self.events = events
        self.horizon_s = horizon_s
        self.model_index = {m.name: i for i, m in enumerate(scenario.models)}
        self._replicas: dict[int, _ReplicaFaults] = {}
        self._shared_tier: Any = None  # the cache's shared tier while cache_down faults hold
        self._cache_down = 0  # cache_down faults holding now

    def start(self) -> None:
        for index, spec in enumerate(self.scenario.faults):
            if spec.kind in SIM_KINDS:
                self.env.process(self._run(index, spec))

    # -- one fault's life ---------------------------------------------------------------------------------------
    def _run(self, index: int, spec: FaultSpec) -> Generator[simpy.Event, Any, None]:
        label = spec.label(index)
        target_rng = self.streams.get(f"faults/{index}/target")
        draws = self.streams.get(f"faults/{index}/draws")
        for start, end in fault_windows(spec, self.streams.get(f"faults/{index}")):
            if start >= self.horizon_s:
                return
            if start > self.env.now:
                yield self.env.timeout(start - self.env.now)
            undo, target = self._begin(label, spec, target_rng, draws)
            if undo is None:
                continue  # nothing to hit (recorded)
            if end == start:
                continue  # an instant: a crash
            if math.isinf(end):
                return  # holds until the run ends
            yield self.env.timeout(end - self.env.now)
            undo()
            self._event(spec, label, target, "end")

    def _event(self, spec: FaultSpec, label: str, target: str, phase: str, note: str = "") -> None:
        replica = target if spec.kind not in ("cache_down", "stale_metrics") else ""
        detail = f"{label}: {spec.kind} on {target}: {phase}" + (f" ({note})" if note else "")
        self.events.append(
            {"time_s": self.env.now, "kind": "fault", "model": spec.model or "", "replica": replica, "detail": detail}
        )

    def _ready(self, model: str) -> list[ReplicaBase]:
        """The model's ready replicas (every revision), by name."""
        route = self.gateway.routes[self.model_index[model]]
        return sorted((r for rev in route.revisions for r in rev.replicas), key=lambda r: r.name)

    def _pick(self, spec: FaultSpec, rng: np.random.Generator) -> tuple[ReplicaBase | None, str]:
        assert spec.model is not None  # checked by FaultSpec for replica faults
        ready = self._ready(spec.model)
        return pick_target(spec, ready, rng)

    def _begin(
        self, label: str, spec: FaultSpec, rng: np.random.Generator, draws: np.random.Generator
    ) -> tuple[Callable[[], None] | None, str]:
        """Inject one window of `spec`: what undoes it (None: nothing was hit), and the target's name; `rng` picks
        a target, `draws` decides errors and jitter."""
        kind = spec.kind
        if kind == "cache_down":
            return self._begin_cache_down(label, spec)
        if kind == "stale_metrics":
            return self._begin_stale(label, spec)
        replica, why = self._pick(spec, rng)
        if replica is None:
            self._event(spec, label, spec.model or "", "skipped", why)
            return None, ""
        self._event(spec, label, replica.name, "start")
        if kind == "replica_crash":
            revision = self.gateway.routes[self.model_index[replica.model_name]].revisions[replica.revision]
            revision.controller.crash(replica, f"fault {label}: replica_crash", "reset")
            return (lambda: None), replica.name
        faults = self._replicas.get(replica.index)
        if faults is None:
            faults = self._replicas[replica.index] = _ReplicaFaults(self.env, replica, self.gateway)
        held: list[Any]
        entry: Any
        if kind == "error_rate":
            held, entry = faults.errors, (label, float(spec.share or 0.0), spec.status, draws)
        elif kind == "network":
            held, entry = faults.links, (label, spec.latency_s, spec.jitter_s, spec.partition, draws, self.env.now)
        else:
            assert kind == "slow_replica" and spec.factor is not None
            held, entry = faults.slow, spec.factor
        held.append(entry)
        faults.apply()

        def undo() -> None:
            held.remove(entry)
            faults.apply()

        return undo, replica.name

    def _begin_cache_down(self, label: str, spec: FaultSpec) -> tuple[Callable[[], None] | None, str]:
        cache = self.gateway.cache
        if cache is None or cache.shared is None:
            self._event(spec, label, "shared cache tier", "skipped", "the gateway has no shared cache tier")
            return None, ""
        self._event(spec, label, "shared cache tier", "start")
        if self._cache_down == 0:
            self._shared_tier, cache.shared = cache.shared, _DownTier(label)
        self._cache_down += 1

        def undo() -> None:
            self._cache_down -= 1
            if self._cache_down == 0:  # the last one holding ends: the tier is back, with what it held
                cache.shared = self._shared_tier

        return undo, "shared cache tier"

    def _begin_stale(self, label: str, spec: FaultSpec) -> tuple[Callable[[], None] | None, str]:
        assert spec.model is not None
        frozen = [r for r in self._ready(spec.model) if "scraped_state" not in vars(r)]
        target = f"{spec.model}'s scrapes"
        self._event(spec, label, target, "start", f"{len(frozen)} replica(s) frozen")
        for r in frozen:
            last = r.scraped_state()
            r.scraped_state = lambda last=last: last  # type: ignore[method-assign]

        def undo() -> None:
            for r in frozen:
                vars(r).pop("scraped_state", None)

        return undo, target


def start_faults(
    env: simpy.Environment,
    scenario: Scenario,
    gateway: Gateway,
    streams: RngStreams,
    events: list[dict[str, Any]],
    horizon_s: float | None,
) -> FaultInjector | None:
    """Start the replica, network, cache and metrics faults of `scenario` (None without any; the node and deploy
    faults are odhsim.sim.faults_infra.start_infra_faults')."""
    if not any(f.kind in SIM_KINDS for f in scenario.faults):
        return None
    injector = FaultInjector(env, scenario, gateway, streams, events, math.inf if horizon_s is None else horizon_s)
    injector.start()
    return injector
