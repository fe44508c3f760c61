"""The model controller: replica lifecycles (pending -> downloading -> loading -> testing -> ready -> draining ->
gone), GPUs from the pool, and the autoscaler's decisions applied on its own intervals.

Policies decide (`policies.autoscaling`, `policies.lifecycle`); this module only moves simulated replicas through
the states with the delays the start-up model gives, and keeps the records (replica states, scaling events).
A draining replica takes no new request and leaves once its last request finishes, so scaling loses nothing.
"""

from __future__ import annotations

import math
from typing import Any

import simpy

from odhsim import catalog
from odhsim.scenario.deployment import ModelDeployment
from odhsim.sim.gateway import Gateway, ModelRoute
from odhsim.sim.gpu_pool import Allocation, SimGpuPool
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.replica_factory import ReplicaFactory
from odhsim.sim.request import STATUS_FAILED
from policies.autoscaling.types import Autoscaler, ScalingMetrics
from policies.cost.budget import BudgetGuard
from policies.lifecycle.states import DOWNLOADING, DRAINING, GONE, LOADING, PENDING, READY, TESTING, Lifecycle
from policies.lifecycle.storage import StartupModel

FIXED_MODEL_BYTES = 512 * 2**20  # weights of a `fixed` model when the catalogue has none (a small classifier)


class Spend:
    """The pool-wide $/hour committed to replicas (holding GPUs or waiting for them), checked against a budget."""

    def __init__(self, guard: BudgetGuard | None) -> None:
        self.guard = guard
        self.controllers: list[ModelController] = []

    def committed_usd_per_hour(self) -> float:
        return sum(c.committed_gpus() * c.price_per_gpu_hour for c in self.controllers)


class ModelController:
    def __init__(
        self,
        env: simpy.Environment,
        model_index: int,
        model: ModelDeployment,
        route: ModelRoute,
        gateway: Gateway,
        factory: ReplicaFactory,
        pool: SimGpuPool,
        startup: StartupModel,
        autoscaler: Autoscaler | None,
        intervals: tuple[float, float],
        events: list[dict[str, Any]],
        states: list[dict[str, Any]],
    ) -> None:
        self.env = env
        self.mi = model_index
        self.model = model
        self.route = route
        self.gateway = gateway
        self.factory = factory
        self.pool = pool
        self.startup = startup
        self.autoscaler = autoscaler
        self.decide_every_s, self.observe_every_s = intervals
        self.events = events
        self.states = states
        self.size_bytes = catalog.model(model.profile).weight_bytes if model.profile else FIXED_MODEL_BYTES
        self.gpus_per_replica = model.gpus_per_replica  # tp x pp
        self.storage_uri = model.storage_uri or f"pvc://models/{model.profile or model.name}"
        self.lifecycles: dict[int, Lifecycle] = {}  # replica index -> lifecycle
        self.allocations: dict[int, Allocation] = {}  # replica index -> the GPUs it holds
        self.grants: dict[int, Any] = {}  # replica index -> queued GPU request of a pending replica
        self.starting: list[ReplicaBase] = []
        self.last_desired = len(route.replicas)
        self.spend: Spend | None = None
        self.price_per_gpu_hour = catalog.gpu(model.gpu).price_per_gpu_hour
        self._budget_refused = False
        self._last_arrivals = 0
        self._poked = False
        self.retired = False  # its revision was promoted away from or rolled back: no more scaling
        self._gpu_s = 0.0  # GPU-seconds held up to _gpu_since (the integral the cost timeseries charges)
        self._gpu_since = env.now

    # -- records ------------------------------------------------------------------------------------------
    def _move(self, replica: ReplicaBase, to: str, detail: str = "") -> None:
        self.lifecycles[replica.index].transition(self.env.now, to, detail)
        replica.state = to
        self.states.append({"time_s": self.env.now, "model": self.model.name, "replica": replica.name, "state": to})

    def _event(self, kind: str, detail: str, replica: str = "") -> None:
        if self.route.rollout is not None:  # two revisions of the model: say which one
            detail = f"{self.model.version}: {detail}"
        self.events.append(
            {"time_s": self.env.now, "kind": kind, "model": self.model.name, "replica": replica, "detail": detail}
        )

    def gpus_held(self) -> int:
        return len(self.allocations) * self.gpus_per_replica

    def gpu_seconds(self) -> float:
        """GPU-seconds held since the controller started: every allocation from grant to release, so a replica
        that starts and stops between two samples is charged for exactly the time it held its GPUs."""
        return self._gpu_s + self.gpus_held() * (self.env.now - self._gpu_since)

    def _allocations_change(self) -> None:
        """Call before adding or removing an allocation: closes the integral at the current holding."""
        now = self.env.now
        self._gpu_s += self.gpus_held() * (now - self._gpu_since)
        self._gpu_since = now

    def committed_gpus(self) -> int:
        """GPUs held plus those asked for by replicas still waiting in `pending`."""
        return (len(self.allocations) + len(self.grants)) * self.gpus_per_replica

    def _budget_allows(self) -> bool:
        if self.spend is None or self.spend.guard is None:
            return True
        added = self.gpus_per_replica * self.price_per_gpu_hour
        verdict = self.spend.guard.allows(self.spend.committed_usd_per_hour(), added, self.model.name)
        if not verdict.allowed and not self._budget_refused:
            self._event("budget", verdict.reason)  # once per refusal spell, not every decision
        self._budget_refused = not verdict.allowed
        return verdict.allowed

    # -- start-up of the initial replicas (already deployed: they hold GPUs and serve from t = 0) ------------
    def adopt_initial(self) -> None:
        """Take the GPUs of the replicas deployed at t = 0; a model deployed with none and nothing to start one
        records why it can never serve (its requests fail at the gateway with the same reason)."""
        approved_empty = self.route.revision == 0 and not self.route.rejection and not self.route.replicas
        if approved_empty and self.autoscaler is None and self.route.fallback is None:
            self._event("unservable", "replicas: 0 and no autoscaler: no replica will ever start")
        for replica in self.route.replicas:
            allocation = self.pool.allocate(self.model.gpu, self.model.tp, self.model.pp)
            assert allocation is not None, "scenario validation guarantees GPUs for the initial replicas"
            self._allocations_change()
            self.allocations[replica.index] = allocation
            for node in allocation.nodes:
                node.cache.add(self.env.now, self._cache_key(), self.size_bytes)
            self.lifecycles[replica.index] = Lifecycle(self.env.now, replica.name, initial=READY)
            self.states.append(
                {"time_s": self.env.now, "model": self.model.name, "replica": replica.name, "state": READY}
            )

    def _cache_key(self) -> str:
        return f"{self.model.profile or self.model.name}@{self.storage_uri}"

    # -- scaling ------------------------------------------------------------------------------------------
    def scale_to(self, desired: int, reason: str) -> None:
        current = len(self.route.replicas) + len(self.starting)
        if desired != self.last_desired:
            self._event("scale", f"{self.last_desired} -> {desired}: {reason}")
            self.last_desired = desired
        for _ in range(desired - current):
            if not self._budget_allows():
                break  # requests queue instead (the seed's "no budget? queue requests")
            self._start_one()
        surplus = current - desired
        while surplus > 0 and self.starting:  # cancel the newest starting replica first (it serves nothing yet)
            self._cancel(self.starting[-1])
            surplus -= 1
        while surplus > 0 and self.route.replicas:  # then drain the newest ready one
            self._drain(self.route.replicas[-1])
            surplus -= 1

    def _start_one(self) -> None:
        replica = self.factory.make(self.mi, self.model, self.route.revision)
        self.lifecycles[replica.index] = Lifecycle(self.env.now, replica.name, initial=PENDING)
        replica.state = PENDING
        self.states.append(
            {"time_s": self.env.now, "model": self.model.name, "replica": replica.name, "state": PENDING}
        )
        self.starting.append(replica)

        def granted(allocation: Allocation, replica: ReplicaBase = replica) -> None:
            self.grants.pop(replica.index, None)
            self._boot(replica, allocation)

        self.grants[replica.index] = granted
        m = self.model
        if not self.pool.request(m.gpu, m.tp, granted, m.pp):
            where = "one node" if m.pp == 1 else f"each of {m.pp} nodes"
            self._event("pending", f"no {m.tp} free {m.gpu} GPU(s) on {where}", replica.name)

    def _boot(self, replica: ReplicaBase, allocation: Allocation) -> None:
        """Every stage's node downloads the model unless its cache has it; the tp x pp GPUs load their shards in
        parallel."""
        self._allocations_change()
        self.allocations[replica.index] = allocation
        nodes = allocation.nodes
        warm = all(node.cache.has(self._cache_key()) for node in nodes)
        plan = self.startup.plan(self.size_bytes, self.storage_uri, self.gpus_per_replica, cached=warm)
        steps = [(LOADING, plan.load_s), (TESTING, plan.test_s), (READY, 0.0)]
        if not warm:
            steps.insert(0, (DOWNLOADING, plan.download_s))
        where = "+".join(node.name for node in nodes)
        self._event("start", f"{'warm' if warm else 'cold'} start on {where}: {plan.total_s:.1f} s", replica.name)
        self._advance(replica, steps)

    def _advance(self, replica: ReplicaBase, steps: list[tuple[str, float]]) -> None:
        if replica.state == GONE:
            return  # cancelled while starting
        state, delay = steps[0]
        self._move(replica, state)
        if state == READY:
            self.starting.remove(replica)
            for node in self.allocations[replica.index].nodes:
                node.cache.add(self.env.now, self._cache_key(), self.size_bytes)
            self.route.add_replica(replica)
            self.gateway.replica_ready(self.route)
            return
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: self._advance(replica, steps[1:]))

    def _cancel(self, replica: ReplicaBase) -> None:
        self.starting.remove(replica)
        grant = self.grants.pop(replica.index, None)
        if grant is not None:
            self.pool.cancel(grant)
        self._move(replica, GONE, "scaled down while starting")
        self._free(replica)

    def _drain(self, replica: ReplicaBase) -> None:
        self.route.remove_replica(replica)
        self._move(replica, DRAINING)
        if replica.in_flight == 0:
            self.retire(replica)
        else:
            timeout = self.env.timeout(self.model.drain_timeout_s)
            timeout.callbacks.append(lambda _e: self._drain_timed_out(replica))

    def _drain_timed_out(self, replica: ReplicaBase) -> None:
        """Still draining after drain_timeout_s: what it holds fails with that reason (counted, not lost)."""
        if replica.state != DRAINING:
            return
        held = replica.abort_all()
        self._move(replica, GONE, f"drain timeout: {len(held)} request(s) failed")
        self._free(replica)
        for req in held:
            self.gateway.finish(req, self.env.now, STATUS_FAILED, f"drain timeout ({self.model.drain_timeout_s:g} s)")

    def retire_all(self, reason: str) -> None:
        """The rollout retired this revision: stop autoscaling, cancel replicas still starting, drain the rest."""
        self.retired = True
        self.scale_to(0, reason)

    def retire(self, replica: ReplicaBase) -> None:
        """A draining replica finished its last request: it leaves and frees its GPUs."""
        self._move(replica, GONE, "drained")
        self._free(replica)

    def _free(self, replica: ReplicaBase) -> None:
        if replica.index not in self.allocations:
            return
        self._allocations_change()
        self.pool.release(self.allocations.pop(replica.index))

    # -- the autoscaler loop ------------------------------------------------------------------------------
    def metrics(self) -> ScalingMetrics:
        """What the autoscaler's scrape sees now (sampled on its own interval, not on every change)."""
        route, now = self.route, self.env.now
        ready = route.replicas
        arrived = route.arrivals  # this revision's share of the model's arrivals (all of them without a canary)
        rate = (arrived - self._last_arrivals) / self.observe_every_s
        self._last_arrivals = arrived
        held = [self.factory.replicas[i] for i in self.allocations]
        in_flight = sum(r.in_flight for r in held) + route.queued()
        waiting = sum(r.waiting() for r in ready)
        last = route.last_arrival_s
        return ScalingMetrics(
            now=now,
            ready_replicas=len(ready),
            pending_replicas=len(self.starting),
            in_flight=float(in_flight),
            arrivals_per_s=rate,
            queue_len=route.queued() + waiting,
            kv_usage=min(1.0, sum(r.kv_usage() for r in ready) / len(ready)) if ready else 0.0,
            waiting_per_replica=waiting / len(ready) if ready else 0.0,
            seconds_since_last_request=now - last if last == last else math.inf,
        )

    def run(self):  # type: ignore[no-untyped-def]
        """Observe every metrics interval, decide every decision interval (both from when it starts: t = 0, or a
        canary's start), until the rollout retires the revision."""
        assert self.autoscaler is not None
        next_decision = self.env.now
        while not self.retired:
            self.autoscaler.observe(self.metrics())
            if self.env.now >= next_decision or self._poked:
                self._poked = False
                decision = self.autoscaler.decide(self.env.now)
                self.scale_to(decision.desired, decision.reason)
                if self.env.now >= next_decision:
                    next_decision += self.decide_every_s
            yield self.env.timeout(self.observe_every_s)

    def poke(self) -> None:
        """The activator holds a request for a model with no ready replica: decide at the next metrics tick."""
        self._poked = True
