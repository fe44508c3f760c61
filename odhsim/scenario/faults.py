"""The `faults:` section: what goes wrong, when, and for how long; one contract for both engines.

Each fault is either timed (`at_s`, and `duration_s` for the faults that end) or random, drawn from its own seeded
stream (`time_to_failure`, and `repair_time` for the faults that end): a random fault repeats, fail / repair / fail,
until the run ends. The simulator (odhsim.sim.faults) and `odhsim serve` (runtime.faults) read the same specs, so the
same scenario can be simulated and served and the two compared.

Kinds (what the engines do with each is described where they inject it):
- replica_crash: the replica's process dies; its in-flight requests fail with the fault as their reason and the
  controller restarts it (CrashLoopBackOff, readiness test; a warm start when the node cache has the model).
- node_failure: every replica on one node dies and the node's GPUs leave the pool until repaired.
- error_rate: a replica answers a `share` of requests with `status` (a bad GPU, a broken model version).
- slow_replica: a straggler whose engine steps take `factor` times longer (thermal throttling, a noisy neighbour).
- network: added `latency_s` (+ uniform `jitter_s`) between gateway and replica, or a `partition` (no connection).
- cache_down: the shared response-cache tier (Redis) is unreachable.
- stale_metrics: the gateway's scrapes of the model's replicas are lost (the router sees the last values).
- download_failure / download_timeout / readiness_failure / load_oom: a replica that starts in the window fails
  to download its model (an error, or a stall until `timeout_s`), fails its readiness test, or runs out of GPU
  memory at load; the controller retries it with CrashLoopBackOff.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Literal, TypeVar, get_args

import numpy as np
from pydantic import Field, model_validator

from odhsim.scenario.deployment import FieldPathError, Frozen

FaultKind = Literal[
    "replica_crash",
    "node_failure",
    "error_rate",
    "slow_replica",
    "network",
    "cache_down",
    "stale_metrics",
    "download_failure",
    "download_timeout",
    "readiness_failure",
    "load_oom",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
LASTING_KINDS = frozenset({"node_failure", "error_rate", "slow_replica", "network", "cache_down", "stale_metrics"})
"""Faults that hold for a while and then end (`duration_s` or `repair_time`); the others are an instant (a crash)
or apply to the replica starts of their window (deploy faults: `duration_s` is the window, default the whole run)."""
DEPLOY_KINDS = frozenset({"download_failure", "download_timeout", "readiness_failure", "load_oom"})
REPLICA_KINDS = frozenset({"replica_crash", "error_rate", "slow_replica", "network"})
"""Faults that hit one replica of a model (`replica`: its index among the model's replicas, ordered by name at
the time the fault starts; null: one drawn from the fault's own stream)."""


class Distribution(Frozen):
    """A random duration: `exponential` (memoryless, mean `mean_s`) or `weibull` (shape `shape` < 1: infant
    mortality, > 1: wear-out; scaled so that its mean is `mean_s`)."""

    dist: Literal["exponential", "weibull"] = "exponential"
    mean_s: Annotated[float, Field(gt=0.0)]
    shape: Annotated[float, Field(gt=0.0)] | None = None

    @model_validator(mode="after")
    def _shape_for_weibull(self) -> Distribution:
        if self.dist == "weibull" and self.shape is None:
            raise ValueError("a weibull distribution needs `shape`")
        if self.dist == "exponential" and self.shape is not None:
            raise ValueError("`shape` is for weibull only")
        return self


class FaultSpec(Frozen):
    """One fault. Fields that do not apply to its kind are refused, so a typo cannot silently do nothing."""

    kind: FaultKind
    name: str | None = None
    """A label for events and results (default: `<kind>-<index>`)."""
    model: str | None = None
    """The model whose replicas it hits (required for replica, metrics and deploy faults)."""
    replica: Annotated[int, Field(ge=0)] | None = None
    pool: str | None = None
    """node_failure: the GPU pool of the node, by its `gpu` name (default: the only pool)."""
    node: Annotated[int, Field(ge=0)] | None = None
    """node_failure: the node's index in its pool (default: one drawn from the fault's stream)."""
    at_s: Annotated[float, Field(ge=0.0)] | None = None
    duration_s: Annotated[float, Field(gt=0.0)] | None = None
    time_to_failure: Distribution | None = None
    repair_time: Distribution | None = None
    share: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """error_rate: the share of requests answered with `status`."""
    status: Annotated[int, Field(ge=500, le=599)] = 503
    factor: Annotated[float, Field(gt=1.0)] | None = None
    """slow_replica: how many times longer each step takes."""
    latency_s: Annotated[float, Field(ge=0.0)] = 0.0
    jitter_s: Annotated[float, Field(ge=0.0)] = 0.0
    partition: bool = False
    timeout_s: Annotated[float, Field(gt=0.0)] = 600.0
    """download_timeout: how long the stalled download holds before the storage initializer gives up."""

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        kind = self.kind
        if (self.at_s is None) == (self.time_to_failure is None):
            raise ValueError(f"{kind}: give exactly one of `at_s` (a timed fault) or `time_to_failure` (random)")
        if self.time_to_failure is not None and kind in LASTING_KINDS and self.repair_time is None:
            raise ValueError(f"{kind}: a random fault that lasts needs `repair_time`")
        if self.repair_time is not None and (self.time_to_failure is None or kind not in LASTING_KINDS):
            raise ValueError(
                f"{kind}: `repair_time` is for random faults that last ({', '.join(sorted(LASTING_KINDS))})"
            )
        if kind == "replica_crash" and self.duration_s is not None:
            raise ValueError("replica_crash: a crash is an instant; the controller's restart decides how long it lasts")
        needs_model = kind in REPLICA_KINDS or kind in DEPLOY_KINDS or kind == "stale_metrics"
        if needs_model and self.model is None:
            raise ValueError(f"{kind}: name the `model` it hits")
        if self.replica is not None and kind not in REPLICA_KINDS:
            raise ValueError(f"{kind}: `replica` is for {', '.join(sorted(REPLICA_KINDS))}")
        if kind != "node_failure" and (self.pool is not None or self.node is not None):
            raise ValueError(f"{kind}: `pool` and `node` are for node_failure")
        if kind == "node_failure" and self.model is not None:
            raise ValueError("node_failure: hits a node (`pool`, `node`), not a model")
        if kind == "cache_down" and self.model is not None:
            raise ValueError("cache_down: the shared tier serves every model; drop `model`")
        if (kind == "error_rate") != (self.share is not None):
            raise ValueError(
                "error_rate needs `share`" if kind == "error_rate" else f"{kind}: `share` is for error_rate"
            )
        if (kind == "slow_replica") != (self.factor is not None):
            raise ValueError(
                "slow_replica needs `factor`" if kind == "slow_replica" else f"{kind}: `factor` is for slow_replica"
            )
        if kind == "network":
            if not self.partition and self.latency_s == 0.0 and self.jitter_s == 0.0:
                raise ValueError("network: give `latency_s`/`jitter_s` or `partition: true`")
        elif self.partition or self.latency_s or self.jitter_s:
            raise ValueError(f"{kind}: `latency_s`, `jitter_s` and `partition` are for network")
        if "status" in self.model_fields_set and kind != "error_rate":
            raise ValueError(f"{kind}: `status` is for error_rate")
        if "timeout_s" in self.model_fields_set and kind != "download_timeout":
            raise ValueError(f"{kind}: `timeout_s` is for download_timeout")
        return self

    def label(self, index: int) -> str:
        """The name events and results give it."""
        return self.name or f"{self.kind}-{index}"

    @property
    def lasting(self) -> bool:
        return self.kind in LASTING_KINDS


def check_fault_targets(faults: list[FaultSpec], model_names: list[str], pools: dict[str, int]) -> None:
    """Refuse a fault that names a model or pool the scenario lacks, or a node past the pool's end (`pools`: each
    pool's node count), naming the fault's field (so the loader quotes its line)."""
    for i, f in enumerate(faults):
        if f.model is not None and f.model not in model_names:
            raise FieldPathError(
                ("faults", i, "model"), f"model {f.model!r} is not in the scenario; known: {model_names}"
            )
        if f.kind == "node_failure":
            if f.pool is None and len(pools) != 1:
                raise FieldPathError(("faults", i), f"node_failure: name the `pool` (the scenario has {sorted(pools)})")
            pool = f.pool if f.pool is not None else next(iter(pools))
            if pool not in pools:
                raise FieldPathError(("faults", i, "pool"), f"pool {pool!r} is not in gpu_pool; known: {sorted(pools)}")
            if f.node is not None and f.node >= pools[pool]:
                raise FieldPathError(
                    ("faults", i, "node"), f"pool {pool!r} has {pools[pool]} nodes (0..{pools[pool] - 1})"
                )


def draw(d: Distribution, rng: np.random.Generator) -> float:
    """One duration from `d` (Weibull scaled to its mean: scale = mean / Gamma(1 + 1/shape))."""
    if d.dist == "exponential":
        return float(rng.exponential(d.mean_s))
    shape = float(d.shape)  # type: ignore[arg-type]  # checked by Distribution
    return float(rng.weibull(shape)) * d.mean_s / math.gamma(1.0 + 1.0 / shape)


def fault_windows(spec: FaultSpec, rng: np.random.Generator) -> Iterator[tuple[float, float]]:
    """When the fault holds: (start_s, end_s) windows in time order, end_s = inf for one that never ends (and
    end_s = start_s for an instant: a crash). Timed: one window. Random: endless (fail, repair, fail, ...), each
    time to failure counted from the previous repair, drawn from `rng` (the fault's own stream), so engines stop
    reading past their horizon. Both engines read the same windows for the same seed."""
    if spec.at_s is not None:
        if spec.kind == "replica_crash":
            yield spec.at_s, spec.at_s
        else:
            yield spec.at_s, math.inf if spec.duration_s is None else spec.at_s + spec.duration_s
        return
    ttf = spec.time_to_failure
    assert ttf is not None  # checked by FaultSpec
    t = 0.0
    while True:
        start = t + draw(ttf, rng)
        if spec.repair_time is not None:
            end = start + draw(spec.repair_time, rng)
        elif spec.duration_s is not None:
            end = start + spec.duration_s
        else:
            end = start
        yield start, end
        t = end


T = TypeVar("T")


def pick_target(spec: FaultSpec, ready: list[T], rng: np.random.Generator) -> tuple[T | None, str]:
    """The ready replica a replica fault hits now, the same rule in both engines: `ready` sorted by name, `replica`
    its index, or one drawn from the fault's target stream when `replica` is null; None and why when none fits."""
    if not ready:
        return None, f"model {spec.model} has no ready replica"
    if spec.replica is None:
        return ready[int(rng.integers(len(ready)))], ""
    if spec.replica >= len(ready):
        return None, f"model {spec.model} has {len(ready)} ready replica(s), no replica {spec.replica}"
    return ready[spec.replica], ""
