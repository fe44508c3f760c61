"""The live controller against fakes (no processes, no HTTP): deploy flow, rejection, crash restarts with back-off,
drains that wait for in-flight requests, autoscaling up, down and from zero, and a stop that leaves nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from odhsim import catalog
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.live import LiveConfig
from odhsim.scenario.model import Scenario
from policies.autoscaling.types import ScaleDecision, ScalingMetrics
from policies.controlplane.capacity import DeviceSlots, Spend
from policies.controlplane.metrics import LoadSnapshot
from policies.cost.budget import BudgetGuard
from policies.lifecycle.states import RestartBackoff, RestartBackoffParams
from policies.placement.binpack import FirstFitDecreasing, NodeState
from runtime.controller import ControllerSettings, EventLog, ModelController
from runtime.readiness import ReadinessError
from runtime.serve import controller_settings, restart_backoff

LIVE_LM = {"lm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 64}}


def deployment(**kw: Any) -> ModelDeployment:
    base: dict[str, Any] = {"name": "chat", "profile": "llama3.2-1b", "gpu": "L4", "replicas": 2, "live": LIVE_LM}
    base.update(kw)
    return ModelDeployment.model_validate(base)


class FakeProcess:
    _pids = itertools.count(1000)

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = next(self._pids)
        self.url = f"http://127.0.0.1:{self.pid}"
        self.returncode: int | None = None
        self.terminated = False

    def alive(self) -> bool:
        return self.returncode is None

    def terminate(self, grace_s: float = 5.0) -> None:
        self.terminated = True
        if self.returncode is None:
            self.returncode = -15

    def kill(self) -> None:
        if self.returncode is None:
            self.returncode = -9


class FakeProber:
    def __init__(self) -> None:
        self.fail_tests = 0  # the next n tests fail
        self.tested: list[str] = []

    async def wait_healthy(self, model: ModelDeployment, proc: FakeProcess, timeout_s: float) -> float:
        await asyncio.sleep(0.01)
        if not proc.alive():
            raise ReadinessError("process exited before it was ready")
        return 0.01

    async def test(self, model: ModelDeployment, base_url: str) -> str:
        await asyncio.sleep(0.01)
        self.tested.append(base_url)
        if self.fail_tests:
            self.fail_tests -= 1
            raise ReadinessError("test completion answered 500: boom")
        return "passed: fake"


class FakeGateway:
    def __init__(self) -> None:
        self.replicas: dict[str, str] = {}
        self.draining: set[str] = set()
        self.held: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.rejected: dict[str, str] = {}
        self.load = 0.0

    def add_replica(self, model: str, name: str, url: str) -> None:
        self.calls.append(("add", name))
        self.replicas[name] = url

    def drain_replica(self, model: str, name: str) -> None:
        self.calls.append(("drain", name))
        self.draining.add(name)

    def remove_replica(self, model: str, name: str) -> None:
        self.calls.append(("remove", name))
        self.replicas.pop(name, None)
        self.draining.discard(name)

    def in_flight(self, model: str, name: str) -> int:
        return self.held.get(name, 0)

    def reject_model(self, model: str, reason: str) -> None:
        self.rejected[model] = reason

    def load_snapshot(self, model: str, now: float, ready: int, pending: int) -> LoadSnapshot:
        return LoadSnapshot(now=now, arrivals=0, in_flight=self.load, queued=0, ready=ready, pending=pending)


class ScriptedAutoscaler:
    """Desired count from a callable of time; records what it observed."""

    def __init__(self, desired: Callable[[float], int]) -> None:
        self.desired = desired
        self.observed: list[ScalingMetrics] = []

    def observe(self, m: ScalingMetrics) -> None:
        self.observed.append(m)

    def decide(self, now: float) -> ScaleDecision:
        return ScaleDecision(self.desired(now), "scripted")


class Harness:
    def __init__(
        self,
        model: ModelDeployment,
        autoscaler: Any = None,
        backoff_s: float = 0.05,
        settings: ControllerSettings | None = None,
        **extra: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.log = EventLog(lambda: loop.time() - t0)
        self.gateway = FakeGateway()
        self.prober = FakeProber()
        self.procs: list[FakeProcess] = []
        if settings is None:
            backoff = RestartBackoff(base_s=backoff_s, max_s=max(1.0, backoff_s))
            settings = ControllerSettings(poll_s=0.01, backoff=backoff)
        self.ctl = ModelController(
            model,
            gateway=self.gateway,
            log=self.log,
            spawn=self.spawn,
            prober=self.prober,
            autoscaler=autoscaler,
            intervals=(0.05, 0.02),
            settings=settings,
            **extra,
        )
        self.devices: dict[str, str] = {}

    def spawn(self, model: ModelDeployment, name: str, device: str | None = None) -> FakeProcess:
        proc = FakeProcess(name)
        self.procs.append(proc)
        if device is not None:
            self.devices[name] = device
        return proc

    def states(self, replica: str) -> list[str]:
        return [s.state for s in self.log.states if s.replica == replica]

    def kinds(self, replica: str = "") -> list[str]:
        return [e.kind for e in self.log.events if e.replica == replica]

    async def until(self, cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while not cond():
            assert loop.time() < end, "condition not met in time"
            await asyncio.sleep(0.005)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.mark.timeout(30)
def test_deploy_flow_states_in_order_and_test_before_traffic() -> None:
    async def main() -> None:
        h = Harness(deployment())
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        names = ["chat-v1-0", "chat-v1-1"]
        for name in names:
            assert h.states(name) == ["pending", "loading", "testing", "ready"]
            kinds = h.kinds(name)
            # the readiness test's event comes before the move to ready, which comes before the gateway add
            assert kinds.index("test") < len(kinds) - 1 and kinds[-1] == "state"
        assert [c for c in h.gateway.calls if c[0] == "add"] == [("add", n) for n in names]
        assert len(h.prober.tested) == 2
        deploy = [e for e in h.log.events if e.kind == "deploy"]
        assert deploy and deploy[0].detail.startswith("approved")
        assert h.log.events_frame().columns.tolist() == ["time_s", "kind", "model", "replica", "detail"]
        await h.ctl.stop()
        assert all(not p.alive() for p in h.procs)
        assert all(h.states(n)[-2:] == ["draining", "gone"] for n in names)

    run(main())


@pytest.mark.timeout(30)
def test_rejected_deployment_starts_nothing_and_tells_the_gateway() -> None:
    async def main() -> None:
        h = Harness(deployment(profile="llama2-70b", tp=1))
        await h.ctl.start()
        assert h.procs == []
        assert h.ctl.rejection is not None and "does not fit" in h.ctl.rejection
        assert h.gateway.rejected["chat"] == h.ctl.rejection
        assert [e.kind for e in h.log.events] == ["deploy"]
        assert h.log.events[0].detail.startswith("rejected")
        no_live = Harness(deployment(live=None))
        await no_live.ctl.start()
        assert "no `live:` section" in (no_live.ctl.rejection or "")
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_crash_removes_restarts_with_backoff_and_retests() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=1), backoff_s=0.1)
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        first = h.procs[0]
        first.returncode = -9  # SIGKILL
        h.ctl.replica_failed("chat-v1-0", "connect error")
        await h.until(lambda: h.states("chat-v1-0")[-1] == "ready" and len(h.procs) == 2)
        assert h.states("chat-v1-0") == [
            "pending", "loading", "testing", "ready", "failed", "restarting", "loading", "testing", "ready",
        ]  # fmt: skip
        assert h.gateway.calls == [("add", "chat-v1-0"), ("remove", "chat-v1-0"), ("add", "chat-v1-0")]
        assert h.gateway.replicas["chat-v1-0"] == h.procs[1].url
        assert len(h.prober.tested) == 2  # tested again before traffic
        crash = [e for e in h.log.events if e.kind == "crash"]
        assert "killed by signal 9" in crash[0].detail
        restart = next(e for e in h.log.events if "-> restarting" in e.detail)
        ready_again = [s for s in h.log.states if s.state == "loading"][1]
        assert ready_again.time_s - restart.time_s >= 0.1  # the back-off delay was waited
        await h.ctl.stop()

    run(main())


def test_restart_backoff_spec_defaults_and_validation() -> None:
    spec = LiveConfig().restart_backoff
    assert (spec.base_s, spec.factor, spec.max_s, spec.reset_after_s) == (10.0, 2.0, 300.0, 600.0)  # kubelet's
    backoff = restart_backoff(spec)
    assert [backoff.next_delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert backoff.attempt_after(3, 599.0) == 4 and backoff.attempt_after(3, 600.0) == 1
    with pytest.raises(ValidationError, match="max_s"):
        RestartBackoffParams(base_s=20, max_s=10)
    with pytest.raises(ValidationError, match="extra"):
        RestartBackoffParams.model_validate({"base": 1})
    with pytest.raises(ValidationError):
        RestartBackoffParams(base_s=0)
    with pytest.raises(ValidationError, match="frozen"):
        spec.base_s = 1.0  # type: ignore[misc]


@pytest.mark.timeout(30)
def test_scenario_restart_backoff_is_waited_before_each_restart() -> None:
    sc = Scenario.model_validate(
        {
            "name": "backoff",
            "gpu_pool": [{"gpu": "L4", "count": 2}],
            "models": [{"name": "chat", "profile": "llama3.2-1b", "gpu": "L4", "replicas": 1, "live": LIVE_LM}],
            "live": {"restart_backoff": {"base_s": 0.4, "factor": 2, "max_s": 5, "reset_after_s": 600}},
            "workload": {"sources": [{"kind": "poisson", "rate": 1, "requests": 1}]},
        }
    )
    settings = dataclasses.replace(controller_settings(sc), poll_s=0.01)
    assert (settings.backoff.base_s, settings.backoff.factor, settings.backoff.max_s) == (0.4, 2.0, 5.0)

    async def main() -> None:
        h = Harness(sc.models[0], settings=settings)
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)

        async def crash_and_time_restart(n: int) -> float:
            h.procs[-1].returncode = -9
            h.ctl.replica_failed("chat-v1-0", "connect error")
            await h.until(lambda: h.states("chat-v1-0")[-1] == "ready" and len(h.procs) == n + 1, 5.0)
            failed = [s.time_s for s in h.log.states if s.state == "failed"][-1]
            loading = [s.time_s for s in h.log.states if s.state == "loading"][-1]
            return loading - failed

        first = await crash_and_time_restart(1)
        assert 0.4 <= first < 0.4 + 0.3  # base_s before the first restart, not the 10 s default
        second = await crash_and_time_restart(2)  # it ran well under reset_after_s: the delay doubles
        assert 0.8 <= second < 0.8 + 0.3
        details = [e.detail for e in h.log.events if "-> restarting" in e.detail]
        assert details == [
            "failed -> restarting: restart 1 after 0.4 s (CrashLoopBackOff)",
            "failed -> restarting: restart 2 after 0.8 s (CrashLoopBackOff)",
        ]
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_failed_test_backs_off_exponentially_then_recovers() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=1), backoff_s=0.02)
        h.prober.fail_tests = 2
        await h.ctl.start()
        await h.until(lambda: h.states("chat-v1-0")[-1:] == ["ready"])
        details = [e.detail for e in h.log.events if "-> restarting" in e.detail]
        assert details == [
            "failed -> restarting: restart 1 after 0.02 s (CrashLoopBackOff)",
            "failed -> restarting: restart 2 after 0.04 s (CrashLoopBackOff)",
        ]
        assert all(p.terminated for p in h.procs[:2])  # a failed test's process is stopped before the restart
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_scale_down_drains_until_no_request_is_held() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=2))
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        h.gateway.held["chat-v1-1"] = 3
        h.ctl.scale_to(1, "test")
        await h.until(lambda: h.states("chat-v1-1")[-1] == "draining")
        assert "chat-v1-1" in h.gateway.draining and "chat-v1-1" in h.gateway.replicas
        await asyncio.sleep(0.1)
        assert h.procs[1].alive()  # still finishing its requests
        h.gateway.held["chat-v1-1"] = 0
        await h.until(lambda: h.states("chat-v1-1")[-1] == "gone")
        assert not h.procs[1].alive() and "chat-v1-1" not in h.gateway.replicas
        gone = [e for e in h.log.events if e.replica == "chat-v1-1"][-1]
        assert gone.detail.endswith("draining -> gone: drained")
        assert [e.detail for e in h.log.events if e.kind == "scale"] == ["2 -> 1: test"]
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_drain_timeout_is_recorded_with_what_was_held() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=1, drain_timeout_s=0.1))
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        h.gateway.held["chat-v1-0"] = 2
        h.ctl.scale_to(0, "test")
        await h.until(lambda: h.states("chat-v1-0")[-1] == "gone")
        assert "drain timeout (0.1 s): 2 request(s) still held" in h.log.events[-1].detail
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_autoscaler_scales_up_and_back_within_bounds() -> None:
    async def main() -> None:
        want = {"n": 3}
        auto = ScriptedAutoscaler(lambda now: want["n"])
        h = Harness(deployment(replicas=1), autoscaler=auto)
        await h.ctl.start()
        await h.until(lambda: len(h.ctl.ready()) == 3)
        await h.until(lambda: auto.observed[-1].ready_replicas == 3)  # it observes the gateway's view
        want["n"] = 1
        await h.until(lambda: len(h.ctl.ready()) == 1 and all(p.terminated for p in h.procs[1:]))
        assert h.states("chat-v1-0") == ["pending", "loading", "testing", "ready"]  # the oldest one stays
        assert [e.detail for e in h.log.events if e.kind == "scale"] == ["1 -> 3: scripted", "3 -> 1: scripted"]
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_scale_down_cancels_starting_replicas_first() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=1))
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        h.ctl.scale_to(2, "up")
        h.ctl.scale_to(1, "down")  # the new one is still pending / loading
        await h.until(lambda: h.states("chat-v1-1")[-1:] == ["gone"])
        assert "ready" not in h.states("chat-v1-1")
        assert h.states("chat-v1-0")[-1] == "ready"
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_cold_request_scales_from_zero_at_the_next_observation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poked_at: dict[str, float] = {}

        class FromZero(ScriptedAutoscaler):
            def decide(self, now: float) -> ScaleDecision:
                return ScaleDecision(1 if "t" in poked_at else 0, "cold" if "t" in poked_at else "idle")

        h = Harness(deployment(replicas=0, kind="llm"), autoscaler=FromZero(lambda now: 0))
        h.ctl.core.schedule.decide_every_s = 60.0  # only a poke can make it decide again
        await h.ctl.start()
        await asyncio.sleep(0.1)
        assert h.procs == []
        poked_at["t"] = loop.time()
        h.ctl.poke()
        await h.until(lambda: len(h.ctl.ready()) == 1, timeout_s=2.0)
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_stop_terminates_everything_in_any_state() -> None:
    async def main() -> None:
        h = Harness(deployment(replicas=2), backoff_s=10.0)
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        h.procs[0].returncode = 1  # crashes: waits 10 s in back-off
        await h.until(lambda: h.states("chat-v1-0")[-1] == "restarting")
        h.ctl.scale_to(3, "up")  # one starting
        await h.ctl.stop()
        assert all(not p.alive() for p in h.procs)
        assert all(r.state == "gone" for r in h.ctl.replicas)
        assert not math.isnan(h.log.states[-1].time_s)
        h.ctl.scale_to(5, "after stop")  # ignored
        assert all(r.state == "gone" for r in h.ctl.replicas)

    run(main())


@pytest.mark.timeout(30)
def test_a_canary_is_said_to_be_simulated_only_and_the_stable_version_serves() -> None:
    async def main() -> None:
        h = Harness(deployment(canary={"version": "v2", "traffic_percent": 10}))
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        canary = [e for e in h.log.events if e.kind == "canary"]
        assert [e.detail for e in canary] == ["canary v2 is simulated only; serving v1"]
        assert [c for c in h.gateway.calls if c[0] == "add"] == [("add", "chat-v1-0"), ("add", "chat-v1-1")]
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_the_budget_caps_a_live_scale_up_and_says_so_once() -> None:
    async def main() -> None:
        per_replica = catalog.gpu("L4").price_per_gpu_hour
        spend = Spend(BudgetGuard(2 * per_replica))
        h = Harness(deployment(replicas=1), spend=spend)
        spend.controllers.append(h.ctl)
        await h.ctl.start()
        await asyncio.wait_for(h.ctl.deployed.wait(), 3)
        h.ctl.scale_to(4, "burst")
        h.ctl.scale_to(4, "burst")  # same refusal spell: no second budget event
        await h.until(lambda: len(h.ctl.ready()) == 2)
        assert len(h.ctl.active()) == 2
        budget = [e.detail for e in h.log.events if e.kind == "budget"]
        assert len(budget) == 1 and "would exceed the $" in budget[0] and "requests queue" in budget[0]
        await h.ctl.stop()

    run(main())


@pytest.mark.timeout(30)
def test_replicas_are_placed_on_the_declared_devices_and_wait_for_a_free_one() -> None:
    async def main() -> None:
        slots = DeviceSlots([NodeState("gpus", "cuda", 2, 0.0)], FirstFitDecreasing())
        h = Harness(deployment(replicas=3), devices=slots, device_names=lambda node, i: f"cuda:{i}")
        await h.ctl.start()
        await h.until(lambda: len(h.ctl.ready()) == 2)
        assert sorted(h.devices.values()) == ["cuda:0", "cuda:1"]
        third = h.ctl.replicas[2]
        assert third.state == "pending" and third.proc is None
        assert any(e.kind == "pending" and e.detail == "no free device in live.devices" for e in h.log.events)
        h.ctl.scale_to(2, "down")  # the pending one leaves first (it serves nothing)
        await h.until(lambda: third.state == "gone")
        freed = h.ctl.ready()[-1]
        h.ctl.scale_to(1, "down")
        await h.until(lambda: freed.state == "gone" and slots.free("cuda") == 1)
        h.ctl.scale_to(2, "up")
        await h.until(lambda: len(h.ctl.ready()) == 2)
        assert h.devices[h.ctl.replicas[-1].name] == h.devices[freed.name]  # the freed slot is reused
        await h.ctl.stop()
        assert slots.free("cuda") == 2

    run(main())
