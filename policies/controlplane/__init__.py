"""The controller core: every decision the model controller makes, pure and engine-free.

Both engines drive it: `odhsim.sim.controller` (SimPy) and `runtime.controller` (asyncio) translate their timers and
process events into calls here and carry out what comes back. Nothing in this package reads a clock, starts a
process or touches a queue; `now` is always an argument.

- `metrics`: raw load counters -> `ScalingMetrics` (rates over the time that actually elapsed, time-averaged
  concurrency);
- `schedule`: when to observe and when to decide;
- `victims`: which replicas leave on a scale-down;
- `restart`: CrashLoopBackOff restart decisions;
- `deploy`: the deploy verdict;
- `capacity`: the budget cap and device placement;
- `core`: `ControllerCore`, the per-model state machine that ties them together.
"""

from policies.controlplane.capacity import BudgetGate, DeviceSlots, Spend
from policies.controlplane.core import ControllerCore, ScalePlan, TickResult
from policies.controlplane.deploy import DeployFacts, deploy_verdict
from policies.controlplane.metrics import ConcurrencyIntegral, LoadSnapshot, MetricsAccumulator
from policies.controlplane.restart import RestartDecision, RestartPolicy
from policies.controlplane.schedule import TickSchedule
from policies.controlplane.victims import ReplicaView, choose_victims

__all__ = [
    "BudgetGate",
    "ConcurrencyIntegral",
    "ControllerCore",
    "DeployFacts",
    "DeviceSlots",
    "LoadSnapshot",
    "MetricsAccumulator",
    "ReplicaView",
    "RestartDecision",
    "RestartPolicy",
    "ScalePlan",
    "Spend",
    "TickResult",
    "TickSchedule",
    "choose_victims",
    "deploy_verdict",
]
