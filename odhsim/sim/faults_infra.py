"""Infrastructure and deploy faults in the simulator: node failures and failed replica starts.

Both read their schedule from `odhsim.scenario.faults.fault_windows` with the fault's own stream
(`faults/<index>`, index = its position in `scenario.faults`), the one schedule `odhsim serve` reads too.

- node_failure: at each window's start the node (the spec's, or one drawn from `faults/<index>/node`) fails: its
  GPUs leave the pool and every replica on it dies (`ModelController.node_lost`: in-flight requests fail as a
  `reset` naming the fault, so the gateway's retry policy and fallback act; the replicas are scheduled again at
  once, on other nodes when GPUs are free there, else pending). At the window's end the node is repaired: its
  GPUs rejoin the pool and pending replicas are placed. Its model cache comes back empty, so a start there is
  cold. KServe's LocalModelCache keeps models on a node's local persistent volume and its node agent (a
  DaemonSet) downloads them to a node that lacks them; a node that reboots keeps its disk, a replaced one (what a
  cloud's node auto-repair does) starts empty. We model the replaced node and not the agent's background
  re-download: the first replica placed there downloads the weights itself and refills the cache.
- download_failure / download_timeout / readiness_failure / load_oom: every start attempt of the model's replicas
  (a first start, a rescheduled one or a CrashLoopBackOff restart) that begins inside a window fails as
  `policies.lifecycle.start_faults.failed_start` says (when and in which phase), goes `failed`, and the
  controller restarts it after its back-off; the first attempt after the window succeeds. A window with no length
  (a random fault without `duration_s`) arms one failure: the model's next start attempt fails (a second arming
before that start changes nothing).

Every window's start and end, and every failed start, is a `fault` event, its detail as odhsim.sim.faults writes
it: `<label>: <kind> on <target>: start|end (<note>)`. Windows that start after the run's horizon are not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import simpy

from odhsim.rng import RngStreams
from odhsim.scenario.faults import DEPLOY_KINDS, FaultSpec, fault_windows
from odhsim.scenario.model import Scenario
from odhsim.sim.controller import ModelController
from odhsim.sim.gateway import Gateway
from odhsim.sim.gpu_pool import Node, SimGpuPool
from odhsim.sim.replica_base import ReplicaBase
from policies.lifecycle.start_faults import FailedStart, failed_start
from policies.lifecycle.storage import StartupPlan

Events = list[dict[str, Any]]


def start_infra_faults(
    env: simpy.Environment, scenario: Scenario, gateway: Gateway, streams: RngStreams, events_log: Events
) -> None:
    """Schedule the scenario's node and deploy faults (the other kinds are odhsim.sim.faults')."""
    controllers: dict[str, list[ModelController]] = {}
    for route in gateway.routes:
        controllers[route.name] = [rev.controller for rev in route.revisions if rev.controller is not None]
    every = [c for cs in controllers.values() for c in cs]
    if not every:
        return
    pool = every[0].pool
    horizon = scenario.hard_stop_s or scenario.duration_s or math.inf
    outages = _Outages(pool)
    deploy: dict[str, list[_DeployFault]] = {}
    for index, spec in enumerate(scenario.faults):
        label = spec.label(index)
        windows = _until(fault_windows(spec, streams.get(f"faults/{index}")), horizon)
        if spec.kind == "node_failure":
            gpu = spec.pool if spec.pool is not None else scenario.gpu_pool[0].gpu
            nodes = [n for n in pool.nodes if n.gpu == gpu]
            picker = _NodePicker(nodes, spec.node, streams.get(f"faults/{index}/node"))
            env.process(_node_failures(env, label, windows, picker, outages, every, events_log))
        elif spec.kind in DEPLOY_KINDS:
            assert spec.model is not None  # checked by FaultSpec
            fault = _DeployFault(spec, label)
            deploy.setdefault(spec.model, []).append(fault)
            env.process(fault.run(env, windows, events_log))
    for model, faults in deploy.items():
        check = _StartCheck(faults)
        for controller in controllers.get(model, []):
            controller.start_fault = check


def _until(windows: Iterator[tuple[float, float]], horizon: float) -> Iterator[tuple[float, float]]:
    for start, end in windows:
        if start >= horizon:
            return
        yield start, end


def _event(events: Events, now: float, detail: str, model: str = "", replica: str = "") -> None:
    events.append({"time_s": now, "kind": "fault", "model": model, "replica": replica, "detail": detail})


# -- node failures ----------------------------------------------------------------------------------------------
class _NodePicker:
    """The node a window hits: the spec's, or one drawn uniformly from the pool's nodes per window."""

    def __init__(self, nodes: list[Node], index: int | None, rng: Any) -> None:
        self.nodes, self.index, self.rng = nodes, index, rng

    def pick(self) -> Node:
        if self.index is not None:
            return self.nodes[self.index]
        return self.nodes[int(self.rng.integers(len(self.nodes)))]


class _Outages:
    """How many node faults hold each node down: two overlapping faults on one node repair it once both end."""

    def __init__(self, pool: SimGpuPool) -> None:
        self.pool = pool
        self.holds: dict[str, int] = {}

    def fail(self, node: Node) -> bool:
        """True when the node went down now (False: another fault already holds it down)."""
        self.holds[node.name] = self.holds.get(node.name, 0) + 1
        if self.holds[node.name] > 1:
            return False
        self.pool.fail_node(node)
        return True

    def repair(self, node: Node) -> bool:
        self.holds[node.name] -= 1
        if self.holds[node.name] > 0:
            return False
        self.pool.repair_node(node)
        return True


def _node_failures(
    env: simpy.Environment,
    label: str,
    windows: Iterator[tuple[float, float]],
    picker: _NodePicker,
    outages: _Outages,
    controllers: list[ModelController],
    events: Events,
):  # type: ignore[no-untyped-def]
    """Fail a node at each window's start (killing its replicas) and repair it at the window's end."""
    pool = outages.pool
    for start, end in windows:
        if start > env.now:
            yield env.timeout(start - env.now)
        node = picker.pick()
        head = f"{label}: node_failure on {node.name}"
        if outages.fail(node):
            on_it = sum(node in a.nodes for c in controllers for a in c.allocations.values())
            note = (
                f"{node.gpus} {node.gpu} GPU(s) leave the pool, {pool.gpus_in_service(node.gpu)} in service; "
                f"{on_it} replica(s) on it lost; node model cache emptied"
            )
            _event(events, env.now, f"{head}: start ({note})")  # before the replicas' records of the same instant
            reason = f"{label}: node {node.name} failed"
            lost = [(c, c.node_lost(node, reason)) for c in controllers]  # every replica on it out of its route,
            for c, requests in lost:  # then their requests fail (a retry cannot pick a replica about to die)
                c.fail_lost(requests, reason)
        else:
            _event(events, env.now, f"{head}: start (already down)")
        if math.isinf(end):
            return
        yield env.timeout(end - env.now)
        if outages.repair(node):
            note = f"repaired, {pool.gpus_in_service(node.gpu)} {node.gpu} GPU(s) in service"
        else:
            note = "still down: another fault holds it"
        _event(events, env.now, f"{head}: end ({note})")


# -- deploy faults ----------------------------------------------------------------------------------------------
class _DeployFault:
    """One deploy fault's state: inside a window (`active`), or armed for the next start (`armed`)."""

    def __init__(self, spec: FaultSpec, label: str) -> None:
        self.spec, self.label = spec, label
        self.active = False
        self.armed = False

    def run(self, env: simpy.Environment, windows: Iterator[tuple[float, float]], events: Events):  # type: ignore[no-untyped-def]
        model = self.spec.model or ""
        for start, end in windows:
            if start > env.now:
                yield env.timeout(start - env.now)
            head = f"{self.label}: {self.spec.kind} on {model}"
            if end == start:  # armed until a start consumes it (arming it twice is still one failure)
                note = "already armed" if self.armed else "the next replica start fails"
                self.armed = True
                _event(events, env.now, f"{head}: start ({note})", model)
                continue
            self.active = True
            until = "the end of the run" if math.isinf(end) else f"{end:g} s"
            _event(events, env.now, f"{head}: start (replica starts fail until {until})", model)
            if math.isinf(end):
                return
            yield env.timeout(end - env.now)
            self.active = False
            _event(events, env.now, f"{head}: end (replica starts succeed again)", model)

    def failure(self, replica: ReplicaBase, plan: StartupPlan) -> FailedStart | None:
        if not (self.active or self.armed):
            return None
        failure = failed_start(plan, self.spec.kind, self.spec.timeout_s)
        if failure is None:
            return None
        if not self.active:
            self.armed = False
        return replace(failure, reason=f"{self.label}: {self.spec.kind} on {replica.name}: {failure.reason}")


class _StartCheck:
    """A controller's `start_fault`: the first of the model's deploy faults (scenario order) that fails a start."""

    def __init__(self, faults: list[_DeployFault]) -> None:
        self.faults = faults

    def __call__(self, replica: ReplicaBase, plan: StartupPlan) -> FailedStart | None:
        for fault in self.faults:
            failure = fault.failure(replica, plan)
            if failure is not None:
                return failure
        return None
