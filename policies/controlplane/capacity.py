"""The budget cap and device placement, decided here for both engines.

Budget: every model's controller commits $/h for the replicas it holds or waits for (GPUs x price); a start is
allowed only while the pool-wide total stays within `BudgetGuard`'s cap. A refused start is announced once per
refusal spell (not at every decision) and the model's requests queue instead (the seed's "no budget? queue").

Placement: a replica takes `tp` devices of one node for each of its `pp` stages, chosen by the scenario's
placement policy (`policies.placement`: first-fit decreasing by default, or best fit) from the nodes' free
devices. The simulator's nodes are its GPU pool; the live engine's are the devices its `live:` section declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policies.cost.budget import BudgetGuard
from policies.placement.binpack import NodeState, Placement, ReplicaRequest


class Committer(Protocol):
    def committed_usd_per_hour(self) -> float: ...


class Spend:
    """The pool-wide $/hour committed by every model's controller, checked against one budget."""

    def __init__(self, guard: BudgetGuard | None) -> None:
        self.guard = guard
        self.controllers: list[Committer] = []

    def committed_usd_per_hour(self) -> float:
        return sum(c.committed_usd_per_hour() for c in self.controllers)


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """allowed: may one more replica start; announce: the reason to record (only at the start of a refusal
    spell), else None."""

    allowed: bool
    announce: str | None = None


class BudgetGate:
    """One model's view of the budget: remembers whether it is in a refusal spell."""

    __slots__ = ("_refused",)

    def __init__(self) -> None:
        self._refused = False

    def check(self, spend: Spend | None, added_usd_per_hour: float, model: str, planned: float = 0.0) -> BudgetCheck:
        """May one more replica costing `added_usd_per_hour` start, with `planned` $/h already granted in this
        decision but not yet committed by the engine?"""
        if spend is None or spend.guard is None:
            return BudgetCheck(True)
        verdict = spend.guard.allows(spend.committed_usd_per_hour() + planned, added_usd_per_hour, model)
        announce = verdict.reason if not verdict.allowed and not self._refused else None
        self._refused = not verdict.allowed
        return BudgetCheck(verdict.allowed, announce)


class Placer(Protocol):
    def place(self, request: ReplicaRequest, nodes: Sequence[NodeState]) -> Placement | None: ...


def place(placer: Placer, nodes: Sequence[NodeState], kind: str | None, tp: int, pp: int = 1) -> Placement | None:
    """Where a replica of `pp` stages of `tp` devices of `kind` (None: any) goes, or None when no node has room."""
    candidates = [n for n in nodes if (kind is None or n.gpu_type == kind) and n.free_gpus >= tp]
    if len(candidates) < pp:
        return None
    return placer.place(ReplicaRequest("replica", tp, 0.0, kind, pp), candidates)


class DeviceSlots:
    """Free devices of declared nodes (the live engine's `live.devices`): place a replica, release it."""

    def __init__(self, nodes: Sequence[NodeState], placer: Placer) -> None:
        self.placer = placer
        self._nodes = {n.name: n for n in nodes}

    def nodes(self) -> list[NodeState]:
        return list(self._nodes.values())

    def place(self, kind: str | None, tp: int = 1, pp: int = 1) -> Placement | None:
        placement = place(self.placer, self.nodes(), kind, tp, pp)
        if placement is not None:
            for name, indices in placement.stages:
                self._nodes[name] = self._nodes[name].without(indices)
        return placement

    def release(self, placement: Placement) -> None:
        for name, indices in placement.stages:
            node = self._nodes[name]
            free = tuple(sorted({*(node.free_gpu_indices or ()), *indices}))
            self._nodes[name] = NodeState(node.name, node.gpu_type, node.gpus_per_node, node.gpu_memory_bytes, free)

    def free(self, kind: str) -> int:
        return sum(n.free_gpus for n in self._nodes.values() if n.gpu_type == kind)
