"""Which replicas leave on a scale-down: one rule for both engines.

Kubernetes' ReplicaSet controller picks the pods to delete by `ActivePodsWithRanks` (pkg/controller/
controller_utils.go): unscheduled before scheduled, pending before running, not ready before ready, then the pod
ready for the shortest time, then the one with more restarts, then the newest. Knative scales a revision through
its Deployment, so that is also what a KPA scale-down removes. Here:

1. replicas still waiting for GPUs (`pending`: not scheduled), newest first;
2. other replicas that serve nothing yet (downloading / loading / testing), newest first;
3. failed or backing-off replicas (not ready), more restarts first, then newest;
4. ready replicas, ready for the shortest time first, then more restarts, then newest.

A replica that is not serving leaves at once; a ready one is drained. Replicas already draining or gone are not
candidates (the caller leaves them out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.lifecycle.states import DOWNLOADING, FAILED, LOADING, PENDING, READY, RESTARTING, TESTING

_STARTING = frozenset({DOWNLOADING, LOADING, TESTING})


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as the core sees it. `index` orders creation (higher is newer); `ready_since` is when it last
    became ready (NaN if it is not ready)."""

    name: str
    index: int
    state: str
    ready_since: float = float("nan")
    restarts: int = 0


def _rank(r: ReplicaView) -> tuple[int, float, int, int]:
    if r.state == PENDING:
        return (0, 0.0, 0, -r.index)
    if r.state in _STARTING:
        return (1, 0.0, 0, -r.index)
    if r.state in (FAILED, RESTARTING):
        return (2, 0.0, -r.restarts, -r.index)
    if r.state == READY:
        since = r.ready_since if r.ready_since == r.ready_since else float("-inf")
        return (3, -since, -r.restarts, -r.index)
    raise ValueError(f"replica '{r.name}' in state {r.state!r} is not a scale-down candidate")


def choose_victims(replicas: Sequence[ReplicaView], surplus: int) -> list[ReplicaView]:
    """The `surplus` replicas to remove, in the order they should go (fewer if there are fewer candidates)."""
    if surplus <= 0:
        return []
    return sorted(replicas, key=_rank)[:surplus]
