"""The model controller: replica lifecycles (pending -> downloading -> loading -> testing -> ready -> draining ->
gone), GPUs from the pool, and the autoscaler's decisions applied on its own intervals.

The SimPy adapter of the controller core (`policies.controlplane`): the core decides when to observe and decide,
what the autoscaler sees, how many replicas start (within the budget), which ones leave, whether and when a crashed
replica restarts, and the deploy verdict; this module reads the simulated counters into a `LoadSnapshot`, turns the
core's plans into replica lifecycles with the delays the start-up model gives, and keeps the records (replica
states, scaling events). A draining replica takes no new request and leaves once its last request finishes, so
scaling loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy

from odhsim import catalog
from odhsim.scenario.deployment import ModelDeployment
from odhsim.sim.gateway import Gateway, ModelRoute
from odhsim.sim.gpu_pool import Allocation, Node, SimGpuPool
from odhsim.sim.replica_base import ReplicaBase
from odhsim.sim.replica_factory import ReplicaFactory
from odhsim.sim.request import STATUS_FAILED, SimRequest
from policies.autoscaling.types import Autoscaler, ScalingMetrics
from policies.controlplane.capacity import Spend
from policies.controlplane.core import ControllerCore, ScalePlan
from policies.controlplane.deploy import DeployFacts, deploy_verdict
from policies.controlplane.metrics import LoadSnapshot
from policies.controlplane.restart import RestartPolicy
from policies.controlplane.victims import ReplicaView
from policies.lifecycle.start_faults import FailedStart
from policies.lifecycle.states import (
    DOWNLOADING,
    DRAINING,
    FAILED,
    GONE,
    LOADING,
    PENDING,
    READY,
    RESTARTING,
    TESTING,
    Lifecycle,
)
from policies.lifecycle.storage import StartupModel, StartupPlan

FIXED_MODEL_BYTES = 512 * 2**20  # weights of a `fixed` model when the catalogue has none (a small classifier)


__all__ = ["ModelController", "Spend", "sim_verdict"]


def sim_verdict(model: ModelDeployment) -> tuple[bool, str]:
    """The core's deploy verdict for the simulator (the scenario's memory check is the only fact it needs)."""
    approved, reason = model.deploy_verdict()
    verdict = deploy_verdict(DeployFacts(model.name, "sim", approved, reason))
    return verdict.approved, verdict.reason


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
        restart: RestartPolicy | None = None,
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
        self.events = events
        self.states = states
        self.size_bytes = model.weight_bytes or FIXED_MODEL_BYTES  # the catalogue's, a profile file's, or fixed
        self.gpus_per_replica = model.gpus_per_replica  # tp x pp
        self.storage_uri = model.storage_uri or f"pvc://models/{model.profile or model.name}"
        self.lifecycles: dict[int, Lifecycle] = {}  # replica index -> lifecycle
        self.allocations: dict[int, Allocation] = {}  # replica index -> the GPUs it holds
        self.deployment_of: dict[int, ModelDeployment] = {}  # replica index -> its replica group (one per GPU type)
        self.grants: dict[int, Any] = {}  # replica index -> queued GPU request of a pending replica
        self.starting: list[ReplicaBase] = []
        self.down: list[ReplicaBase] = []  # failed or backing off before a restart in place
        self.attempts: dict[int, int] = {}  # replica index -> CrashLoopBackOff attempt of its latest restart
        # Deploy faults (odhsim.sim.faults_infra): asked at every start attempt; None when the scenario has none
        self.start_fault: Callable[[ReplicaBase, StartupPlan], FailedStart | None] | None = None
        self._failing: dict[int, FailedStart] = {}  # replica index -> how its current start attempt fails
        self._redownload: set[int] = set()  # replicas whose restart downloads again (their download failed)
        self._boots: dict[int, int] = {}  # replica index -> start attempts cut short (stale start-up timers skip)
        self.crashed: set[int] = set()  # replicas that crashed and are not ready again yet
        self.price_per_gpu_hour = catalog.gpu(model.gpu).price_per_gpu_hour
        self.core = ControllerCore(
            model.name,
            start=env.now,
            desired=len(route.replicas),
            intervals=intervals,
            autoscaler=autoscaler,
            restart=restart,
            usd_per_replica_hour=self.gpus_per_replica * self.price_per_gpu_hour,
        )
        self.retired = False  # its revision was promoted away from or rolled back: no more scaling
        # GPU-seconds held up to _gpu_since per GPU type (the integrals the cost timeseries charges, each at its price)
        self._gpu_s = {g.gpu: 0.0 for g in model.groups()}
        self._gpu_since = env.now

    @property
    def spend(self) -> Spend | None:
        return self.core.spend

    @spend.setter
    def spend(self, spend: Spend | None) -> None:
        self.core.spend = spend

    @property
    def last_desired(self) -> int:
        return self.core.last_desired

    @last_desired.setter
    def last_desired(self, n: int) -> None:
        self.core.last_desired = n

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

    def _held_by_gpu(self) -> dict[str, int]:
        """GPUs held now per GPU type (a model with replica groups holds several types)."""
        held = dict.fromkeys(self._gpu_s, 0)
        for index in self.allocations:
            d = self.deployment_of.get(index, self.model)
            held[d.gpu] = held.get(d.gpu, 0) + d.gpus_per_replica
        return held

    def gpus_held(self) -> int:
        return sum(self._held_by_gpu().values())

    def gpu_seconds_by_gpu(self) -> dict[str, float]:
        """GPU-seconds held since the controller started, per GPU type: every allocation from grant to release,
        so a replica that starts and stops between two samples is charged for exactly the time it held its GPUs."""
        dt = self.env.now - self._gpu_since
        return {g: self._gpu_s.get(g, 0.0) + n * dt for g, n in self._held_by_gpu().items()}

    def gpu_seconds(self) -> float:
        return sum(self.gpu_seconds_by_gpu().values())

    def _allocations_change(self) -> None:
        """Call before adding or removing an allocation: closes the integrals at the current holding."""
        self._gpu_s = self.gpu_seconds_by_gpu()
        self._gpu_since = self.env.now

    def committed_gpus(self) -> int:
        """GPUs held plus those asked for by replicas still waiting in `pending`."""
        return self.gpus_held() + len(self.grants) * self.gpus_per_replica

    def committed_usd_per_hour(self) -> float:
        """What the budget counts for this revision (`policies.controlplane.Spend`), each GPU at its price."""
        held = sum(n * catalog.gpu(g).price_per_gpu_hour for g, n in self._held_by_gpu().items())
        return held + len(self.grants) * self.gpus_per_replica * self.price_per_gpu_hour

    # -- start-up of the initial replicas (already deployed: they hold GPUs and serve from t = 0) ------------
    def adopt_initial(self) -> None:
        """Take the GPUs of the replicas deployed at t = 0; a model deployed with none and nothing to start one
        records why it can never serve (its requests fail at the gateway with the same reason)."""
        approved_empty = self.route.revision == 0 and not self.route.rejection and not self.route.replicas
        if approved_empty and self.autoscaler is None and self.route.fallback is None:
            self._event("unservable", "replicas: 0 and no autoscaler: no replica will ever start")
        groups = [g for g in self.model.groups() for _ in range(g.replicas)]  # the cluster made them in this order
        for k, replica in enumerate(self.route.replicas):
            d = groups[k] if len(groups) == len(self.route.replicas) else self.model
            self.deployment_of[replica.index] = d
            allocation = self.pool.allocate(d.gpu, d.tp, d.pp)
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

    # -- carrying out the core's plans ----------------------------------------------------------------------
    def views(self) -> list[ReplicaView]:
        """The replicas that count toward the desired number, as the core sees them (creation order)."""
        out = []
        for r in [*self.starting, *self.down, *self.route.replicas]:
            life = self.lifecycles[r.index]
            since = life.entered_at if life.state == READY else float("nan")
            out.append(ReplicaView(r.name, r.index, life.state, since, life.restarts))
        return sorted(out, key=lambda v: v.index)

    def scale_to(self, desired: int, reason: str) -> None:
        self.apply(self.core.plan(desired, reason, self.views()))

    def apply(self, plan: ScalePlan) -> None:
        """Record the scale event, start what the budget allowed, say why the rest waits, stop the victims."""
        if plan.scale_event is not None:
            self._event("scale", plan.scale_event)
        for _ in range(plan.start):
            self._start_one()
        if plan.budget_refusal is not None:
            self._event("budget", plan.budget_refusal)  # once per refusal spell, not every decision
        by_index = {r.index: r for r in [*self.starting, *self.down, *self.route.replicas]}
        for victim in plan.victims:
            replica = by_index[victim.index]
            if replica.state == READY:
                self._drain(replica)
            elif replica in self.down:
                self.down.remove(replica)
                self.crashed.discard(replica.index)
                self._move(replica, GONE, "scaled down while failed")
                self._free(replica)
            else:
                self._cancel(replica)

    def _start_one(self) -> None:
        replica = self.factory.make(self.mi, self.model, self.route.revision)
        self.lifecycles[replica.index] = Lifecycle(self.env.now, replica.name, initial=PENDING)
        replica.state = PENDING
        self.states.append(
            {"time_s": self.env.now, "model": self.model.name, "replica": replica.name, "state": PENDING}
        )
        self.starting.append(replica)
        self._request_gpus(replica)

    def _request_gpus(self, replica: ReplicaBase) -> None:
        """Ask the pool for the replica's GPUs; it boots when they are granted (at once, or when some free up)."""

        def granted(allocation: Allocation, replica: ReplicaBase = replica) -> None:
            self.grants.pop(replica.index, None)
            self._boot(replica, allocation)

        self.grants[replica.index] = granted
        m = self.deployment_of.get(replica.index, self.model)
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
        self._redownload.discard(replica.index)  # new GPUs: the node's cache decides, not a failed download elsewhere
        plan = self.startup.plan(self.size_bytes, self.storage_uri, self.gpus_per_replica, cached=warm)
        where = "+".join(node.name for node in nodes)
        self._event("start", f"{'warm' if warm else 'cold'} start on {where}: {plan.total_s:.1f} s", replica.name)
        self._advance(replica, self._steps(replica, plan, warm))

    def _steps(self, replica: ReplicaBase, plan: StartupPlan, warm: bool) -> list[tuple[str, float]]:
        """The start-up steps of `plan` (no download when `warm`), cut short by a deploy fault when one holds now
        (`start_fault`)."""
        failure = None if self.start_fault is None else self.start_fault(replica, plan)
        if failure is not None:
            self._failing[replica.index] = failure
            return [*failure.phases, (FAILED, 0.0)]
        steps = [(LOADING, plan.load_s), (TESTING, plan.test_s), (READY, 0.0)]
        if not warm:
            steps.insert(0, (DOWNLOADING, plan.download_s))
        return steps

    def _advance(self, replica: ReplicaBase, steps: list[tuple[str, float]], boot: int | None = None) -> None:
        if boot is None:
            boot = self._boots.get(replica.index, 0)
        if replica.state == GONE or boot != self._boots.get(replica.index, 0):
            return  # cancelled while starting, or its node failed under it
        state, delay = steps[0]
        if state == FAILED:
            self._start_failed(replica)
            return
        self._move(replica, state)
        if state == READY:
            self.starting.remove(replica)
            for node in self.allocations[replica.index].nodes:
                node.cache.add(self.env.now, self._cache_key(), self.size_bytes)
            self.route.add_replica(replica)
            if self.crashed:
                self.crashed.discard(replica.index)
                self.route.core.scales = self.route.autoscaled or bool(self.crashed)
            self.gateway.replica_ready(self.route)
            return
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: self._advance(replica, steps[1:], boot))

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

    # -- crashes: CrashLoopBackOff restarts in place (the core decides when) ------------------------------------
    def crash(self, replica: ReplicaBase, reason: str, kind: str | None = None) -> None:
        """A ready replica's engine died: out of the route, its requests fail with `reason` (counted), `failed`,
        then a restart in place (it keeps its GPUs and the node's cached weights) when the core's back-off says.
        `kind`: the failure kind the gateway's retry policy sees for each of them (a `reset` when the process died
        under them); None ends them for good (not retried)."""
        if replica.state != READY:
            return
        self.crashed.add(replica.index)
        self.route.core.scales = True  # a replica is coming back: requests wait for it rather than fail at once
        life = self.lifecycles[replica.index]
        ran_for = self.env.now - life.entered_at
        self.route.remove_replica(replica)
        held = replica.abort_all()
        self._event("crash", f"{reason} after {ran_for:.1f} s ready", replica.name)
        self._move(replica, FAILED, reason)
        for req in held:
            if kind is None:
                self.gateway.finish(req, self.env.now, STATUS_FAILED, f"replica failed: {reason}")
            else:
                self.gateway.connection_lost(req, self.env.now, f"replica failed: {reason}", kind)
        self.down.append(replica)
        decision = self.core.restart.on_failure(self.env.now, self.attempts.get(replica.index, 0), ran_for)
        self.attempts[replica.index] = decision.attempt
        self._move(replica, RESTARTING, decision.reason)
        timer = self.env.timeout(decision.delay_s)
        timer.callbacks.append(lambda _e: self._restart(replica))

    def _restart(self, replica: ReplicaBase) -> None:
        if replica.state != RESTARTING or replica not in self.down:
            return  # scaled away while backing off
        self.down.remove(replica)
        self.starting.append(replica)
        if replica.index not in self.allocations:  # its node failed while it backed off: scheduled again
            self._move(replica, PENDING, "rescheduled: its node failed")
            self._request_gpus(replica)
            return
        gpus = self.deployment_of.get(replica.index, self.model).gpus_per_replica
        cold = replica.index in self._redownload  # its download failed: the restart downloads again
        self._redownload.discard(replica.index)
        plan = self.startup.plan(self.size_bytes, self.storage_uri, gpus, cached=not cold)
        attempt, start = self.attempts.get(replica.index, 0), "cold" if cold else "warm"
        self._event("restart", f"restart {attempt}: {start} start, {plan.total_s:.1f} s to ready", replica.name)
        self._advance(replica, self._steps(replica, plan, not cold))

    # -- infrastructure faults (odhsim.sim.faults_infra) ----------------------------------------------------
    def _start_failed(self, replica: ReplicaBase) -> None:
        """A deploy fault failed this start attempt: a `fault` event naming it, `failed`, then CrashLoopBackOff."""
        failure = self._failing.pop(replica.index)
        self._event("fault", failure.reason, replica.name)
        self._move(replica, FAILED, failure.reason)
        if failure.redownload:
            self._redownload.add(replica.index)
        self.starting.remove(replica)
        self.down.append(replica)
        decision = self.core.restart.on_failure(self.env.now, self.attempts.get(replica.index, 0), 0.0)
        self.attempts[replica.index] = decision.attempt
        self._move(replica, RESTARTING, decision.reason)
        timer = self.env.timeout(decision.delay_s)
        timer.callbacks.append(lambda _e: self._restart(replica))

    def node_lost(self, node: Node, reason: str) -> list[SimRequest]:
        """`node` failed: every replica of this revision with GPUs on it dies and gives them back. Ready ones leave
        the route; ready and starting ones are scheduled again at once (a new pod, not a container restart: no
        back-off), pending until GPUs are free; backing-off ones are scheduled again when their back-off ends;
        draining ones are gone. Returns the requests they held: the caller fails them (`fail_lost`) once every
        replica on the node is out of its route, so that no retry goes to a replica about to die."""
        lost: list[SimRequest] = []
        for index, allocation in list(self.allocations.items()):
            if node not in allocation.nodes:
                continue
            replica = self.factory.replicas[index]
            state = replica.state
            if state in (READY, DRAINING):
                lost += replica.abort_all()
            if state == DRAINING:
                self._move(replica, GONE, reason)
            elif state not in (FAILED, RESTARTING):  # ready or starting (backing-off ones wait for _restart)
                if state == READY:
                    self.route.remove_replica(replica)
                    self.starting.append(replica)
                    self.crashed.add(index)  # as a crash: requests wait for it rather than fail at once
                    self.route.core.scales = True
                self._boots[index] = self._boots.get(index, 0) + 1  # its start-up timers are stale now
                self._failing.pop(index, None)
                self._redownload.discard(index)
                self._move(replica, FAILED, reason)
                self._move(replica, RESTARTING, "rescheduled: its node failed")
                self._event("restart", f"rescheduled: {reason}", replica.name)
            self._free(replica)
            if replica.state == RESTARTING and replica in self.starting:
                self._move(replica, PENDING)
                self._request_gpus(replica)
        return lost

    def fail_lost(self, lost: list[SimRequest], reason: str) -> None:
        """The requests a lost node's replicas held end as failed attempts of kind `reset` (the process died under
        them), so the gateway's retry policy and fallback act (before their first token: `Gateway.connection_lost`);
        the reason names the fault."""
        for req in lost:
            self.gateway.connection_lost(req, self.env.now, f"replica failed: {reason}", "reset")

    # -- the autoscaler loop ------------------------------------------------------------------------------
    def snapshot(self) -> LoadSnapshot:
        """The simulated counters the core turns into the autoscaler's `ScalingMetrics`."""
        route = self.route
        ready = route.replicas
        held = [self.factory.replicas[i] for i in self.allocations]
        queued = route.queued()
        waiting = sum(r.waiting() for r in ready)
        return LoadSnapshot(
            now=self.env.now,
            arrivals=route.arrivals,  # this revision's share of the model's arrivals (all of them without a canary)
            in_flight=float(sum(r.in_flight for r in held) + queued),
            queued=queued + waiting,
            ready=len(ready),
            pending=len(self.starting),
            waiting=float(waiting),
            kv_usage_sum=sum(r.kv_usage() for r in ready),
            serving=len(ready),
            last_arrival_s=route.last_arrival_s,
            in_flight_s=None if route.concurrency is None else route.concurrency.value(self.env.now),
        )

    def metrics(self) -> ScalingMetrics:
        """What the autoscaler's scrape sees now (through the core's accumulator: rates over elapsed time)."""
        return self.core.accumulator.observe(self.snapshot())

    def run(self):  # type: ignore[no-untyped-def]
        """Tick on the core's schedule from when it starts (t = 0, or a canary's start) until the rollout retires
        the revision: every tick observes; the core says when a decision is due and what to do."""
        assert self.autoscaler is not None
        self.core.begin(self.env.now, self.route.arrivals)
        while not self.retired:
            result = self.core.tick(self.env.now, self.snapshot(), self.views())
            if result.plan is not None:
                self.apply(result.plan)
            yield self.env.timeout(self.core.schedule.observe_every_s)

    def poke(self) -> None:
        """The activator holds a request for a model with no ready replica: decide at the next metrics tick."""
        self.core.poke()
