"""Bin-packing model replicas onto GPU nodes: first-fit(-decreasing) and best-fit(-decreasing), kind "placement".

Model of the cluster:
- A node has one GPU type, `gpus_per_node` GPUs each with `gpu_memory_bytes`, and a set of free GPU indices.
- GPUs are exclusive per replica (the Kubernetes device plugin hands out whole `nvidia.com/gpu`s; no MIG, no
  time-slicing, no fractional sharing), so a free GPU's free memory is all of its memory. Many models share a
  node by taking different GPUs of it.
- A replica asks for `tp` GPUs of one type (or any type), each with at least `memory_per_gpu_bytes`. Tensor
  parallelism never spans nodes: all `tp` GPUs come from one node, else the replica does not fit there.
- With `pp` pipeline stages a replica asks for `pp` such groups, each stage on its own node (stages talk over the
  inter-node network; a stage's TP group stays inside its node). Stages are placed one after another, each by the
  policy's rule among the nodes no earlier stage took; since one node takes at most one stage, that is the same as
  taking the `pp` fitting nodes the policy ranks first. Too few fitting nodes: the replica does not fit.
- The chosen GPUs are the node's lowest free indices.

Policies:
- `first-fit-decreasing` (default): `place` takes the first node, in the order given, that fits. `pack` first
  sorts the batch by memory need (tp x memory per GPU) descending (ties: larger tp first, then input order) and
  then places each in turn, updating the free GPUs.
- `best-fit`: `place` takes the fitting node that leaves the fewest free GPUs, then the least unused memory on the
  chosen GPUs (GPU memory - need), then the earliest in the order given. `pack` uses the same decreasing sort.
  Best-fit keeps whole empty nodes for later large replicas: online, with nodes A (4 free) and B (2 free), a
  tp=2 replica goes to A under first-fit and a following tp=4 replica finds no node; best-fit puts the tp=2 on B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from policies.registry import PolicyParams


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node as the placer sees it. `free_gpu_indices` None means every GPU is free."""

    name: str
    gpu_type: str
    gpus_per_node: int
    gpu_memory_bytes: float
    free_gpu_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0:
            raise ValueError(f"node '{self.name}': gpus_per_node must be >= 0")
        if self.free_gpu_indices is None:
            object.__setattr__(self, "free_gpu_indices", tuple(range(self.gpus_per_node)))
        else:
            free = tuple(sorted(set(self.free_gpu_indices)))
            if len(free) != len(self.free_gpu_indices):
                raise ValueError(f"node '{self.name}': duplicate free GPU index")
            if any(i < 0 or i >= self.gpus_per_node for i in free):
                raise ValueError(f"node '{self.name}': free GPU index outside 0..{self.gpus_per_node - 1}")
            object.__setattr__(self, "free_gpu_indices", free)

    @classmethod
    def with_free_count(
        cls, name: str, gpu_type: str, gpus_per_node: int, gpu_memory_bytes: float, free: int
    ) -> NodeState:
        """A node whose first `gpus_per_node - free` GPUs are taken and the last `free` are free."""
        if not 0 <= free <= gpus_per_node:
            raise ValueError(f"node '{name}': free={free} must be within 0..{gpus_per_node}")
        return cls(name, gpu_type, gpus_per_node, gpu_memory_bytes, tuple(range(gpus_per_node - free, gpus_per_node)))

    @property
    def free_gpus(self) -> int:
        return len(self.free_gpu_indices or ())

    def without(self, gpu_indices: Sequence[int]) -> NodeState:
        """The node after a placement took `gpu_indices`."""
        taken = set(gpu_indices)
        if not taken <= set(self.free_gpu_indices or ()):
            raise ValueError(f"node '{self.name}': GPUs {sorted(taken)} are not all free")
        return replace(self, free_gpu_indices=tuple(i for i in self.free_gpu_indices or () if i not in taken))


@dataclass(frozen=True, slots=True)
class ReplicaRequest:
    """What one replica needs: `pp` stages (nodes) of `tp` GPUs of `gpu_type` (None: any type) with
    `memory_per_gpu_bytes` each."""

    name: str
    tp: int = 1
    memory_per_gpu_bytes: float = 0.0
    gpu_type: str | None = None
    pp: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"replica '{self.name}': tp must be >= 1")
        if self.pp < 1:
            raise ValueError(f"replica '{self.name}': pp must be >= 1")
        if self.memory_per_gpu_bytes < 0:
            raise ValueError(f"replica '{self.name}': memory_per_gpu_bytes must be >= 0")

    @property
    def memory_need_bytes(self) -> float:
        return self.tp * self.pp * self.memory_per_gpu_bytes


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a replica went: its first stage's node and GPUs; `more_stages` holds pipeline stages 2..pp."""

    node: str
    gpu_indices: tuple[int, ...]
    replica: str = ""
    more_stages: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def stages(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(node, GPU indices) of every stage, first stage first (one entry without pipeline parallelism)."""
        return ((self.node, self.gpu_indices), *self.more_stages)


def fits(request: ReplicaRequest, node: NodeState) -> bool:
    """Right GPU type, enough memory per GPU, and `tp` free GPUs on this one node (for one stage)."""
    return (
        (request.gpu_type is None or request.gpu_type == node.gpu_type)
        and node.gpu_memory_bytes >= request.memory_per_gpu_bytes
        and node.free_gpus >= request.tp
    )


def apply(nodes: Sequence[NodeState], placement: Placement) -> tuple[NodeState, ...]:
    """The nodes after `placement` took its GPUs (every stage's)."""
    taken = dict(placement.stages)
    return tuple(n.without(taken[n.name]) if n.name in taken else n for n in nodes)


def decreasing_order(requests: Sequence[ReplicaRequest]) -> list[int]:
    """Indices of `requests` by memory need descending, then tp descending, then input order."""
    return sorted(range(len(requests)), key=lambda i: (-requests[i].memory_need_bytes, -requests[i].tp, i))


class PlacementParams(PolicyParams):
    """`placement` policies: `sort_decreasing` (default True) sorts a `pack` batch by memory need first."""

    sort_decreasing: bool = True


class _BinPacker:
    TYPE: ClassVar[str] = ""
    Params: ClassVar[type[PlacementParams]] = PlacementParams

    __slots__ = ("sort_decreasing",)

    def __init__(self, sort_decreasing: bool = True) -> None:
        self.sort_decreasing = sort_decreasing

    @classmethod
    def from_params(cls, params: PlacementParams, rng: np.random.Generator) -> _BinPacker:
        return cls(params.sort_decreasing)

    def _key(self, request: ReplicaRequest, node: NodeState, position: int) -> tuple[float, ...]:
        raise NotImplementedError

    def place(self, request: ReplicaRequest, nodes: Sequence[NodeState]) -> Placement | None:
        """Where one replica goes, or None when no single node can hold all its GPUs (with pipeline stages: when
        fewer than `pp` distinct nodes can each hold a stage)."""
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        candidates = [(self._key(request, n, i), n) for i, n in enumerate(nodes) if fits(request, n)]
        if len(candidates) < request.pp:
            return None
        if request.pp == 1:
            chosen = [min(candidates, key=lambda c: c[0])[1]]
        else:
            chosen = [n for _, n in sorted(candidates, key=lambda c: c[0])[: request.pp]]
        stages = tuple((n.name, tuple((n.free_gpu_indices or ())[: request.tp])) for n in chosen)
        return Placement(stages[0][0], stages[0][1], request.name, stages[1:])

    def pack(self, requests: Sequence[ReplicaRequest], nodes: Sequence[NodeState]) -> list[Placement | None]:
        """Place a batch (results in the input order; None for a replica that did not fit)."""
        order = decreasing_order(requests) if self.sort_decreasing else list(range(len(requests)))
        state = tuple(nodes)
        out: list[Placement | None] = [None] * len(requests)
        for i in order:
            placement = self.place(requests[i], state)
            if placement is not None:
                state = apply(state, placement)
                out[i] = placement
        return out


class FirstFitDecreasing(_BinPacker):
    """First node (in the order given) that fits; batches sorted by memory need descending."""

    TYPE = "first-fit-decreasing"
    __slots__ = ()

    def _key(self, request: ReplicaRequest, node: NodeState, position: int) -> tuple[float, ...]:
        return (position,)


class BestFit(_BinPacker):
    """The fitting node left with the fewest free GPUs, then the least unused memory per GPU."""

    TYPE = "best-fit"
    __slots__ = ()

    def _key(self, request: ReplicaRequest, node: NodeState, position: int) -> tuple[float, ...]:
        return (node.free_gpus - request.tp, node.gpu_memory_bytes - request.memory_per_gpu_bytes, position)


PLACERS: tuple[type[_BinPacker], ...] = (FirstFitDecreasing, BestFit)
DEFAULT_PLACER = FirstFitDecreasing.TYPE
