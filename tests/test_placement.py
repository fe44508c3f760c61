"""Placement: first-fit-decreasing vs best-fit on hand-built clusters; TP stays on one node; None when nothing fits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.placement import BestFit, FirstFitDecreasing, NodeState, Placement, ReplicaRequest, apply, fits
from policies.placement.registration import register
from policies.registry import Registry

GIB = 2**30
H100 = 80 * GIB
L40S = 48 * GIB


def _node(name: str, free: int, total: int = 8, gpu: str = "H100", mem: float = H100) -> NodeState:
    return NodeState.with_free_count(name, gpu, total, mem, free)


def test_node_state_helpers() -> None:
    n = _node("a", free=3, total=8)
    assert n.free_gpu_indices == (5, 6, 7) and n.free_gpus == 3
    assert NodeState("b", "H100", 4, H100).free_gpu_indices == (0, 1, 2, 3)
    assert n.without((5, 6)).free_gpu_indices == (7,)
    with pytest.raises(ValueError, match="not all free"):
        n.without((0,))
    with pytest.raises(ValueError, match="outside"):
        NodeState("c", "H100", 4, H100, (4,))
    with pytest.raises(ValueError, match="tp must be >= 1"):
        ReplicaRequest("r", tp=0)


def test_online_fragmentation_first_fit_vs_best_fit() -> None:
    """A has 4 free GPUs, B has 2. A tp=2 replica then a tp=4 one: first-fit splits A and strands the tp=4."""
    nodes = (_node("A", 4, total=4), _node("B", 2, total=4))
    small, big = ReplicaRequest("small", tp=2), ReplicaRequest("big", tp=4)
    ff, bf = FirstFitDecreasing(), BestFit()

    p = ff.place(small, nodes)
    assert p == Placement("A", (0, 1), "small")
    assert ff.place(big, apply(nodes, p)) is None

    p = bf.place(small, nodes)
    assert p == Placement("B", (2, 3), "small")
    assert bf.place(big, apply(nodes, p)) == Placement("A", (0, 1, 2, 3), "big")


def test_best_fit_keeps_big_memory_gpus_for_big_replicas() -> None:
    """Any GPU type: a 30 GiB replica goes to the L40S under best-fit, leaving the H100 for a 70 GiB one."""
    nodes = (_node("h100", 1, total=1), _node("l40s", 1, total=1, gpu="L40S", mem=L40S))
    small = ReplicaRequest("small", memory_per_gpu_bytes=30 * GIB)
    large = ReplicaRequest("large", memory_per_gpu_bytes=70 * GIB)
    assert FirstFitDecreasing().place(small, nodes).node == "h100"
    assert BestFit().place(small, nodes).node == "l40s"
    # Online order small then large: only best-fit places both.
    assert FirstFitDecreasing(sort_decreasing=False).pack([small, large], nodes)[1] is None
    assert [p.node for p in BestFit(sort_decreasing=False).pack([small, large], nodes)] == ["l40s", "h100"]
    # Decreasing order rescues first-fit here: the 70 GiB replica is placed first.
    assert [p.node for p in FirstFitDecreasing().pack([small, large], nodes)] == ["l40s", "h100"]


def test_pack_sorts_by_memory_need_and_keeps_input_order() -> None:
    nodes = (_node("A", 4, total=4), _node("B", 4, total=4))
    reqs = [
        ReplicaRequest("r1", tp=1, memory_per_gpu_bytes=10 * GIB),
        ReplicaRequest("r4", tp=4, memory_per_gpu_bytes=60 * GIB),
    ]
    out = FirstFitDecreasing().pack(reqs, nodes)
    assert out[1] == Placement("A", (0, 1, 2, 3), "r4")  # biggest first, so it gets the first node
    assert out[0] == Placement("B", (0,), "r1")
    unsorted = FirstFitDecreasing(sort_decreasing=False).pack(reqs, nodes)
    assert unsorted[0].node == "A" and unsorted[1].node == "B"


def test_gpu_type_and_memory_are_respected() -> None:
    nodes = (_node("l", 8, gpu="L40S", mem=L40S), _node("h", 2))
    assert FirstFitDecreasing().place(ReplicaRequest("x", tp=2, gpu_type="H100"), nodes).node == "h"
    assert FirstFitDecreasing().place(ReplicaRequest("x", tp=1, memory_per_gpu_bytes=60 * GIB), nodes).node == "h"
    assert FirstFitDecreasing().place(ReplicaRequest("x", tp=1, gpu_type="A100"), nodes) is None


@pytest.mark.parametrize("placer", [FirstFitDecreasing(), BestFit()])
def test_none_when_nothing_fits_and_tp_never_spans_nodes(placer: FirstFitDecreasing | BestFit) -> None:
    nodes = (_node("A", 3), _node("B", 3))  # 6 free GPUs in all, 3 per node
    assert placer.place(ReplicaRequest("tp4", tp=4), nodes) is None
    assert placer.place(ReplicaRequest("big-mem", memory_per_gpu_bytes=H100 + 1), nodes) is None
    assert placer.place(ReplicaRequest("r", tp=1), ()) is None
    assert (
        placer.pack([ReplicaRequest("a", tp=3), ReplicaRequest("b", tp=3), ReplicaRequest("c", tp=1)], nodes)[2] is None
    )
    with pytest.raises(ValueError, match="unique"):
        placer.place(ReplicaRequest("r"), (_node("A", 1), _node("A", 1)))


nodes_st = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 8), st.sampled_from(["H100", "L40S"])), min_size=0, max_size=6
).map(
    lambda xs: tuple(
        NodeState.with_free_count(f"n{i}", g, t, H100 if g == "H100" else L40S, min(f, t))
        for i, (t, f, g) in enumerate(xs)
    )
)
reqs_st = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 90), st.sampled_from([None, "H100", "L40S"])), max_size=12
).map(lambda xs: [ReplicaRequest(f"r{i}", tp, m * GIB, g) for i, (tp, m, g) in enumerate(xs)])


@settings(max_examples=200, deadline=None)
@given(nodes_st, reqs_st, st.sampled_from([FirstFitDecreasing, BestFit]), st.booleans())
def test_pack_invariants(nodes: tuple[NodeState, ...], reqs: list[ReplicaRequest], cls: type, sort: bool) -> None:
    out = cls(sort_decreasing=sort).pack(reqs, nodes)
    by_name = {n.name: n for n in nodes}
    used: dict[str, set[int]] = {n.name: set() for n in nodes}
    for req, p in zip(reqs, out, strict=True):
        if p is None:
            continue
        node = by_name[p.node]
        assert len(p.gpu_indices) == req.tp  # all tp GPUs on the one node named
        assert fits(req, node)
        assert set(p.gpu_indices) <= set(node.free_gpu_indices)
        assert not used[p.node] & set(p.gpu_indices)  # exclusive GPUs: never handed out twice
        used[p.node] |= set(p.gpu_indices)
    # A replica left out really did not fit what was left after the others.
    state = nodes
    for p in out:
        if p is not None:
            state = apply(state, p)
    for req, p in zip(reqs, out, strict=True):
        if p is None:
            assert not any(fits(req, n) for n in state)


def test_registration() -> None:
    reg = Registry()
    register(reg)
    assert reg.names("placement") == ["best-fit", "first-fit-decreasing"]
    rng = np.random.default_rng(0)
    assert isinstance(reg.build("placement", "best-fit", None, rng), BestFit)
    ff = reg.build("placement", "first-fit-decreasing", {"sort_decreasing": False}, rng)
    assert isinstance(ff, FirstFitDecreasing) and not ff.sort_decreasing
