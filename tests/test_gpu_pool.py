"""The simulated GPU pool: whole GPUs per replica, TP inside one node, FIFO waiting, placement by policy."""

from __future__ import annotations

import numpy as np

from odhsim.scenario.deployment import GpuPool
from odhsim.sim.gpu_pool import Allocation, SimGpuPool
from policies.builtin import REGISTRY


def pool(policy: str, *sizes: int) -> SimGpuPool:
    pools = [GpuPool(gpu="H100-80GB", count=sum(sizes), gpus_per_node=max(sizes))]
    p = SimGpuPool(pools, REGISTRY.build("placement", policy, {}, np.random.default_rng(0)))
    # shape the nodes as given (the last node of a pool may be smaller)
    for node, n in zip(p.nodes, sizes, strict=False):
        node.gpus, node.free_indices = n, set(range(n))
    return p


def test_tensor_parallel_group_stays_on_one_node_and_waits_fifo() -> None:
    p = pool("first-fit-decreasing", 4, 4)
    a = p.allocate("H100-80GB", 3)
    assert a is not None and len(a.gpu_indices) == 3
    got: list[Allocation] = []
    assert p.request("H100-80GB", 2, got.append)  # 1 + 4 free GPUs: two fit on node 1 at once
    assert len(got) == 1 and got[0].node is not a.node
    assert not p.request("H100-80GB", 3, got.append)  # 1 + 2 free, no node has 3: it waits
    p.release(a)
    assert len(got) == 2 and got[1].node is a.node  # granted as soon as the release made room


def test_best_fit_avoids_the_fragmentation_first_fit_causes() -> None:
    # node A has 4 free GPUs, node B 2; a tp=2 replica then a tp=4 one arrive one at a time
    ffd, best = pool("first-fit-decreasing", 4, 2), pool("best-fit", 4, 2)
    assert ffd.allocate("H100-80GB", 2) is not None and ffd.allocate("H100-80GB", 4) is None
    assert best.allocate("H100-80GB", 2) is not None and best.allocate("H100-80GB", 4) is not None
