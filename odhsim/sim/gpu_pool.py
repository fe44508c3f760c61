"""The simulated GPU pool: nodes of one GPU type each, whole GPUs per replica, a node-local model cache.

A replica's tensor-parallel group stays inside one node. Requests for GPUs that cannot be met wait in FIFO order
(the replica is `pending`) and are granted as soon as a release makes room.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from odhsim.scenario.deployment import GpuPool
from policies.lifecycle.storage import NodeModelCache

GIB = 2**30


@dataclass(eq=False)
class Node:
    name: str
    gpu: str
    gpus: int
    free: int
    cache: NodeModelCache = field(repr=False)


Grant = Callable[[Node], None]


class SimGpuPool:
    def __init__(self, pools: list[GpuPool]) -> None:
        self.nodes: list[Node] = []
        for p in pools:
            full, rest = divmod(p.count, p.gpus_per_node)
            sizes = [p.gpus_per_node] * full + ([rest] if rest else [])
            for i, n in enumerate(sizes):
                cache = NodeModelCache(p.model_cache_gb * GIB)
                self.nodes.append(Node(f"{p.gpu.lower()}-node-{i}", p.gpu, n, n, cache))
        self._waiting: deque[tuple[str, int, Grant]] = deque()

    def allocate(self, gpu: str, tp: int) -> Node | None:
        """First node of that GPU type with `tp` free GPUs (first fit), or None."""
        for node in self.nodes:
            if node.gpu == gpu and node.free >= tp:
                node.free -= tp
                return node
        return None

    def request(self, gpu: str, tp: int, grant: Grant) -> bool:
        """Allocate now (True, `grant` already called) or queue the request until GPUs free up (False)."""
        queued_ahead = any(w[0] == gpu for w in self._waiting)  # FIFO per GPU type
        node = None if queued_ahead else self.allocate(gpu, tp)
        if node is None:
            self._waiting.append((gpu, tp, grant))
            return False
        grant(node)
        return True

    def cancel(self, grant: Grant) -> bool:
        """Withdraw a queued request (a pending replica scaled away before it got GPUs)."""
        for item in self._waiting:
            if item[2] is grant:
                self._waiting.remove(item)
                return True
        return False

    def release(self, node: Node, tp: int) -> None:
        node.free += tp
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        kept: deque[tuple[str, int, Grant]] = deque()
        while self._waiting:
            gpu, tp, grant = self._waiting.popleft()
            node = self.allocate(gpu, tp)
            if node is None:
                kept.append((gpu, tp, grant))
            else:
                grant(node)
        self._waiting = kept

    def free_gpus(self, gpu: str) -> int:
        return sum(n.free for n in self.nodes if n.gpu == gpu)
