"""The simulated GPU pool: nodes of one GPU type each, whole GPUs per replica, a node-local model cache.

A replica's tensor-parallel group stays inside one node; a pipeline-parallel replica has one such group (stage)
on each of `pp` distinct nodes. Requests for GPUs that cannot be met wait in FIFO order (the replica is `pending`)
and are granted as soon as a release makes room.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from odhsim import catalog
from odhsim.scenario.deployment import GpuPool
from policies.lifecycle.storage import NodeModelCache
from policies.placement.binpack import NodeState, Placement, ReplicaRequest

GIB = 2**30


@dataclass(eq=False)
class Node:
    name: str
    gpu: str
    gpus: int
    memory_bytes: float
    free_indices: set[int]
    cache: NodeModelCache = field(repr=False)
    down: bool = False  # failed (a node_failure fault): its GPUs are out of the pool until repaired

    @property
    def free(self) -> int:
        return len(self.free_indices)

    def state(self) -> NodeState:
        return NodeState(self.name, self.gpu, self.gpus, self.memory_bytes, tuple(sorted(self.free_indices)))


@dataclass(frozen=True, eq=False)
class Allocation:
    """The GPUs one replica holds: a node and the indices of its GPUs there; pipeline stages 2..pp, each on
    another node, in `more_stages`."""

    node: Node
    gpu_indices: tuple[int, ...]
    more_stages: tuple[tuple[Node, tuple[int, ...]], ...] = ()

    @property
    def stages(self) -> tuple[tuple[Node, tuple[int, ...]], ...]:
        return ((self.node, self.gpu_indices), *self.more_stages)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(node for node, _ in self.stages)


Grant = Callable[[Allocation], None]


class Placer(Protocol):
    def place(self, request: ReplicaRequest, nodes: Sequence[NodeState]) -> Placement | None: ...


class SimGpuPool:
    """GPUs are whole and exclusive per replica; where a replica goes is the placement policy's decision
    (`policies.placement`: first-fit decreasing by default, or best fit)."""

    def __init__(self, pools: list[GpuPool], placer: Placer) -> None:
        self.placer = placer
        self.nodes: list[Node] = []
        for p in pools:
            full, rest = divmod(p.count, p.gpus_per_node)
            sizes = [p.gpus_per_node] * full + ([rest] if rest else [])
            memory = catalog.gpu(p.gpu).memory_bytes
            for i, n in enumerate(sizes):
                cache = NodeModelCache(p.model_cache_gb * GIB)
                self.nodes.append(Node(f"{p.gpu.lower()}-node-{i}", p.gpu, n, memory, set(range(n)), cache))
        self._by_name = {n.name: n for n in self.nodes}
        self._waiting: deque[tuple[str, int, int, Grant]] = deque()

    def allocate(self, gpu: str, tp: int, pp: int = 1) -> Allocation | None:
        """Place a replica of `pp` stages of `tp` GPUs (each stage on its own node of that GPU type), or None when
        the nodes have no room."""
        candidates = [n.state() for n in self.nodes if n.gpu == gpu and n.free >= tp and not n.down]
        if len(candidates) < pp:
            return None
        placement = self.placer.place(ReplicaRequest("replica", tp, 0.0, gpu, pp), candidates)
        if placement is None:
            return None
        stages = []
        for name, indices in placement.stages:
            node = self._by_name[name]
            node.free_indices.difference_update(indices)
            stages.append((node, indices))
        return Allocation(stages[0][0], stages[0][1], tuple(stages[1:]))

    def request(self, gpu: str, tp: int, grant: Grant, pp: int = 1) -> bool:
        """Allocate now (True, `grant` already called) or queue the request until GPUs free up (False)."""
        queued_ahead = any(w[0] == gpu for w in self._waiting)  # FIFO per GPU type
        allocation = None if queued_ahead else self.allocate(gpu, tp, pp)
        if allocation is None:
            self._waiting.append((gpu, tp, pp, grant))
            return False
        grant(allocation)
        return True

    def cancel(self, grant: Grant) -> bool:
        """Withdraw a queued request (a pending replica scaled away before it got GPUs)."""
        for item in self._waiting:
            if item[3] is grant:
                self._waiting.remove(item)
                return True
        return False

    def release(self, allocation: Allocation) -> None:
        for node, indices in allocation.stages:
            node.free_indices.update(indices)
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        kept: deque[tuple[str, int, int, Grant]] = deque()
        while self._waiting:
            gpu, tp, pp, grant = self._waiting.popleft()
            allocation = self.allocate(gpu, tp, pp)
            if allocation is None:
                kept.append((gpu, tp, pp, grant))
            else:
                grant(allocation)
        self._waiting = kept

    def free_gpus(self, gpu: str) -> int:
        return sum(n.free for n in self.nodes if n.gpu == gpu and not n.down)

    def gpus_in_service(self, gpu: str) -> int:
        """GPUs of that type on nodes that are up (held or free)."""
        return sum(n.gpus for n in self.nodes if n.gpu == gpu and not n.down)

    def fail_node(self, node: Node) -> None:
        """The node is lost: its GPUs leave the pool and its model cache is emptied (a repaired node comes back as
        a fresh machine). The caller kills the replicas on it and releases their allocations."""
        node.down = True
        node.cache = NodeModelCache(node.cache.capacity_bytes)

    def repair_node(self, node: Node) -> None:
        """The node is back: its GPUs rejoin the pool and queued requests are placed (FIFO per GPU type)."""
        node.down = False
        self._serve_waiting()
