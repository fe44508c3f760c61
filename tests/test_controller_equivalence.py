"""The same scripted sequence through the SimPy adapter and the asyncio adapter yields the same decisions.

Script: two ready replicas; scale to 4 under a budget that fits 3 (one start, one budget refusal); replica 0
crashes (CrashLoopBackOff restart 1 after the base delay); scale to 1 (victims: the starting one, the one backing
off, then the most recently ready one); a tick of observations with the same counters (same ScalingMetrics,
the time-averaged concurrency from each engine's in-flight integral included).
Both adapters are recorded at the core's boundary: the plans the core returns, the restart decisions, the deploy
verdict and the metrics the autoscaler observed.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import simpy

from odhsim import catalog
from odhsim.scenario.deployment import ModelDeployment
from odhsim.sim.controller import ModelController as SimController
from odhsim.sim.controller import sim_verdict
from policies.autoscaling.types import ScaleDecision, ScalingMetrics
from policies.controlplane.capacity import Spend
from policies.controlplane.metrics import ConcurrencyIntegral, LoadSnapshot
from policies.controlplane.restart import RestartPolicy
from policies.cost.budget import BudgetGuard
from policies.lifecycle.states import RestartBackoff
from runtime.controller import ControllerSettings, EventLog
from runtime.controller import ModelController as LiveController

LIVE_LM = {"lm": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 64}}
MODEL = ModelDeployment.model_validate(
    {"name": "chat", "profile": "llama3.2-1b", "gpu": "L4", "replicas": 2, "live": LIVE_LM}
)
PRICE = catalog.gpu("L4").price_per_gpu_hour


class Recorder:
    """Wraps a controller core: every plan and restart decision it hands out, in order."""

    def __init__(self, core: Any) -> None:
        self.decisions: list[tuple[Any, ...]] = []
        plan, restart = core.plan, core.restart.on_failure
        decisions = self.decisions

        def record_plan(desired: int, reason: str, replicas: Any) -> Any:
            p = plan(desired, reason, replicas)
            decisions.append(("plan", p.scale_event, p.start, tuple(v.name for v in p.victims), p.budget_refusal))
            return p

        class Recording(RestartPolicy):
            def on_failure(self, now: float, attempt: int, ran_for: float, retiring: bool = False) -> Any:
                d = restart(now, attempt, ran_for, retiring)
                decisions.append(("restart", d.restart, d.attempt, d.delay_s, d.reason))
                return d

        core.plan = record_plan
        core.restart = Recording(core.restart.backoff)


class Script:
    """Observations: the autoscaler sees what the core built; decides nothing on its own."""

    def __init__(self) -> None:
        self.seen: list[ScalingMetrics] = []

    def observe(self, m: ScalingMetrics) -> None:
        self.seen.append(m)

    def decide(self, now: float) -> ScaleDecision:
        return ScaleDecision(4, "scripted")


SNAPSHOTS = [(0.0, 0), (1.0, 5), (2.0, 9)]  # (t, cumulative arrivals)
HELD = [(0.0, 3), (0.5, -2)]  # (t, change in requests held): 3 for 0.5 s, then 1


def hold_until(integral: ConcurrencyIntegral, since: float, t: float) -> None:
    """The script's changes in (since, t], each at its own time, into an engine's in-flight integral."""
    for at, delta in HELD:
        if since < at <= t:
            integral.change(at, delta)


# -- the SimPy adapter against fakes of its neighbours -----------------------------------------------------------
@dataclass(eq=False)
class FakeSimReplica:
    index: int
    name: str
    state: str = "ready"
    in_flight: int = 0

    def waiting(self) -> int:
        return 0

    def kv_usage(self) -> float:
        return 0.0

    def abort_all(self) -> list[Any]:
        return []


@dataclass(eq=False)
class FakeRoute:
    replicas: list[Any] = field(default_factory=list)
    arrivals: int = 0
    last_arrival_s: float = float("nan")
    rollout: Any = None
    revision: int = 0
    rejection: str = ""
    fallback: Any = None
    concurrency: ConcurrencyIntegral = field(default_factory=ConcurrencyIntegral)  # as an autoscaled revision's
    autoscaled: bool = True
    core: Any = field(default_factory=lambda: SimpleNamespace(scales=True))  # the gateway core's RouteState

    def queued(self) -> int:
        return 0

    def add_replica(self, r: Any) -> None:
        self.replicas.append(r)

    def remove_replica(self, r: Any) -> None:
        self.replicas.remove(r)


class FakeCache:
    def has(self, key: str) -> bool:
        return True

    def add(self, *args: Any) -> None:
        pass


class FakePool:
    node = SimpleNamespace(name="n0", cache=FakeCache())

    def allocate(self, *args: Any) -> Any:
        return SimpleNamespace(nodes=(self.node,))

    def request(self, gpu: str, tp: int, grant: Any, pp: int = 1) -> bool:
        grant(self.allocate())
        return True

    def release(self, allocation: Any) -> None:
        pass

    def cancel(self, grant: Any) -> bool:
        return True


class FakeFactory:
    def __init__(self) -> None:
        self.replicas: dict[int, FakeSimReplica] = {}
        self._n = itertools.count()

    def make(self, mi: int, model: ModelDeployment, revision: int) -> FakeSimReplica:
        i = next(self._n)
        self.replicas[i] = FakeSimReplica(i, f"chat-v1-{i}", "pending")
        return self.replicas[i]


def run_sim() -> tuple[list[tuple[Any, ...]], list[ScalingMetrics], tuple[bool, str]]:
    env = simpy.Environment()
    factory = FakeFactory()
    route = FakeRoute()
    for _ in range(2):
        r = factory.make(0, MODEL, 0)
        r.state = "ready"
        route.replicas.append(r)
    startup = SimpleNamespace(plan=lambda *a, **k: SimpleNamespace(download_s=0.0, load_s=1e6, test_s=1.0, total_s=1e6))
    gateway = SimpleNamespace(replica_ready=lambda route: None, finish=lambda *a: None)
    script = Script()
    ctl = SimController(env, 0, MODEL, route, gateway, factory, FakePool(), startup, script, (2.0, 1.0), [], [],  # type: ignore[arg-type]
                        restart=RestartPolicy(RestartBackoff(base_s=10.0)))  # fmt: skip
    spend = Spend(BudgetGuard(3 * PRICE))
    ctl.spend = spend
    spend.controllers.append(ctl)
    ctl.adopt_initial()
    rec = Recorder(ctl.core)
    ctl.core.begin(0.0, 0)
    since = -1.0
    for t, arrivals in SNAPSHOTS:
        env.run(until=t) if t > env.now else None
        route.arrivals = arrivals
        hold_until(route.concurrency, since, t)
        since = t
        result = ctl.core.tick(env.now, ctl.snapshot(), ctl.views())
        if result.plan is not None:
            ctl.apply(result.plan)
    ctl.scale_to(4, "up")
    env.run(until=3.0)
    ctl.crash(route.replicas[0], "process exited with code 1")
    ctl.scale_to(1, "down")
    return rec.decisions, script.seen, sim_verdict(MODEL)


# -- the asyncio adapter against a fake clock, process starter and gateway ---------------------------------------
class FakeProc:
    _pids = itertools.count(1000)

    def __init__(self) -> None:
        self.pid = next(self._pids)
        self.url = f"http://127.0.0.1:{self.pid}"
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.returncode is None

    def terminate(self, grace_s: float = 5.0) -> None:
        if self.returncode is None:
            self.returncode = -15

    def kill(self) -> None:
        self.terminate()


class FakeProber:
    def __init__(self) -> None:
        self.hold = False

    async def wait_healthy(self, model: Any, proc: Any, timeout_s: float) -> float:
        while self.hold:  # replicas started after the deploy stay loading, as the simulated ones do
            await asyncio.sleep(0.01)
        return 0.0

    async def test(self, model: Any, base_url: str) -> str:
        return "passed"


class FakeGateway:
    def __init__(self) -> None:
        self.arrivals = 0
        self.concurrency = ConcurrencyIntegral()  # as runtime.gateway's ModelRoute keeps for an autoscaled model

    def add_replica(self, *a: Any) -> None: ...
    def drain_replica(self, *a: Any) -> None: ...
    def remove_replica(self, *a: Any) -> None: ...
    def in_flight(self, *a: Any) -> int:
        return 0

    def load_snapshot(self, model: str, now: float, ready: int, pending: int) -> LoadSnapshot:
        return LoadSnapshot(now=now, arrivals=self.arrivals, in_flight=0.0, queued=0, ready=ready, pending=pending,
                            serving=ready, in_flight_s=self.concurrency.value(now))  # fmt: skip


def run_live() -> tuple[list[tuple[Any, ...]], list[ScalingMetrics], tuple[bool, str]]:
    async def main() -> tuple[list[tuple[Any, ...]], list[ScalingMetrics], tuple[bool, str]]:
        clock = {"t": 0.0}
        log = EventLog(lambda: clock["t"])
        gateway, prober, procs, script = FakeGateway(), FakeProber(), [], Script()

        def spawn(model: Any, name: str) -> FakeProc:
            procs.append(FakeProc())
            return procs[-1]

        settings = ControllerSettings(poll_s=0.005, backoff=RestartBackoff(base_s=10.0))
        ctl = LiveController(MODEL, gateway=gateway, log=log, spawn=spawn, prober=prober, settings=settings,
                             spend=Spend(BudgetGuard(3 * PRICE)), intervals=(2.0, 1.0))  # fmt: skip
        ctl.core.autoscaler = script  # ticked by hand below on the fake clock, not by the controller's own loop
        assert ctl.core.spend is not None
        ctl.core.spend.controllers.append(ctl)
        rec = Recorder(ctl.core)
        await ctl.start()
        await asyncio.wait_for(ctl.deployed.wait(), 5)
        ctl.core.begin(0.0, 0)
        prober.hold = True
        since = -1.0
        for t, arrivals in SNAPSHOTS:
            clock["t"], gateway.arrivals = t, arrivals
            hold_until(gateway.concurrency, since, t)
            since = t
            result = ctl.core.tick(t, ctl._snapshot(t), ctl.views())
            if result.plan is not None:
                ctl.apply(result.plan)
            await asyncio.sleep(0.02)
        clock["t"] = 2.5
        ctl.scale_to(4, "up")
        await asyncio.sleep(0.05)
        clock["t"] = 3.0
        procs[0].returncode = 1
        for _ in range(200):
            if ctl.replicas[0].state == "restarting":
                break
            await asyncio.sleep(0.005)
        ctl.scale_to(1, "down")
        verdict = ctl.verdict()
        await ctl.stop()
        return rec.decisions, script.seen, verdict

    return asyncio.run(main())


@pytest.mark.timeout(60)
def test_both_adapters_make_the_same_decisions() -> None:
    sim_decisions, sim_seen, sim_verdict_ = run_sim()
    live_decisions, live_seen, live_verdict = run_live()
    budget = f"would exceed the ${3 * PRICE:.2f}/h budget"
    assert sim_decisions[0][:4] == ("plan", "2 -> 4: scripted", 1, ())  # the tick at t = 0 decides
    assert sim_decisions[0][4] is not None and budget in sim_decisions[0][4]
    assert sim_decisions[1:] == [
        ("plan", None, 0, (), None),  # the tick at t = 2: the refusal spell goes on, not announced again
        ("plan", None, 0, (), None),  # scale_to(4, "up")
        ("restart", True, 1, 10.0, "restart 1 after 10 s (CrashLoopBackOff)"),
        ("plan", "4 -> 1: down", 0, ("chat-v1-2", "chat-v1-0"), None),  # loading first, then the one backing off
    ]
    assert live_decisions == sim_decisions
    assert [(m.now, m.arrivals_per_s, m.ready_replicas, m.avg_concurrency) for m in sim_seen] == [
        (0.0, 0.0, 2, 0.0),  # no time elapsed: the point sample
        (1.0, 5.0, 2, 2.0),  # 3 held for 0.5 s, 1 for 0.5 s
        (2.0, 4.0, 2, 1.0),
    ]
    assert live_seen == sim_seen
    assert sim_verdict_ == live_verdict and sim_verdict_[0] is True
