"""The live engine's budget cap and device slots, built from the scenario as the simulator builds its own: the
same `BudgetGuard` over the same $/h (catalogue GPU price x tp x pp per replica) and the same placement policy,
placing replicas on the devices `live.devices` declares (`policies.controlplane.capacity`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from policies.builtin import REGISTRY
from policies.controlplane.capacity import DeviceSlots, Spend
from policies.cost.budget import BudgetGuard
from policies.placement.binpack import NodeState


@dataclass(frozen=True)
class LiveCapacity:
    """spend: shared by every model's controller; devices: None without `live.devices` (no placement)."""

    spend: Spend
    devices: DeviceSlots | None
    device_name: Callable[[str, int], str]


def live_capacity(scenario: Scenario, streams: RngStreams) -> LiveCapacity:
    budget = scenario.budget_usd_per_hour
    spend = Spend(None if budget is None else BudgetGuard(budget))
    groups = {d.name: d for d in scenario.live.devices or ()}
    devices = None
    if groups:
        placer = REGISTRY.build("placement", scenario.placement, {}, streams.get("placement"))
        nodes = [NodeState(d.name, d.kind, d.count, 0.0) for d in groups.values()]
        devices = DeviceSlots(nodes, placer)  # type: ignore[arg-type]

    def device_name(node: str, index: int) -> str:
        return groups[node].device(index)

    return LiveCapacity(spend, devices, device_name)
