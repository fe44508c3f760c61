"""Placement: bin-packing replicas (tp GPUs on one node, exclusive GPUs) onto GPU nodes."""

from policies.placement.binpack import (
    DEFAULT_PLACER,
    BestFit,
    FirstFitDecreasing,
    NodeState,
    Placement,
    PlacementParams,
    ReplicaRequest,
    apply,
    fits,
)

__all__ = [
    "DEFAULT_PLACER",
    "BestFit",
    "FirstFitDecreasing",
    "NodeState",
    "Placement",
    "PlacementParams",
    "ReplicaRequest",
    "apply",
    "fits",
]
