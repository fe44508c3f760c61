"""A fleet for one model (replica groups, each a GPU type x tensor-parallel degree x count), the scenario that
serves the model's traffic on it at a chosen arrival rate, and what one simulation of that scenario says: whether
the SLOs hold, the SLO attainment, TTFT / end-to-end p99, $/h and cost per million output tokens.

Right-sizing and capacity search (odhsim.experiments.capacity) are built from `FleetJob`s, which are picklable and
run by `check_fleet` in any executor: every job of a search replays the same workload seed (common random
numbers), so two fleets or two rates differ only in what is compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from odhsim import catalog
from odhsim.experiments.slo import meets_slos, slo_ratios
from odhsim.results.summary import latency_columns
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario, Slo

DROPPED_FIELDS = ("autoscaling", "fallback", "canary", "live", "deployments")
"""Fields of the model's deployment a fixed-size fleet leaves out: the fleet is the replica groups (its own
`deployments` when it has several), and the search measures the model alone (no fallback, no rollout)."""


@dataclass(frozen=True, order=True)
class ReplicaGroup:
    """`replicas` replicas of `tp` GPUs of `gpu` each."""

    gpu: str
    tp: int
    replicas: int

    @property
    def option(self) -> str:
        return f"{self.gpu} x{self.tp}"

    @property
    def usd_per_hour(self) -> float:
        return self.replicas * self.tp * catalog.gpu(self.gpu).price_per_gpu_hour


@dataclass(frozen=True)
class Fleet:
    """One model served on one or several replica groups (a mixed fleet needs `models[i].deployments`)."""

    model: str
    groups: tuple[ReplicaGroup, ...]

    def __post_init__(self) -> None:
        if not self.groups or any(g.replicas < 1 for g in self.groups):
            raise ValueError(f"fleet of '{self.model}': every group needs at least one replica")

    @property
    def usd_per_hour(self) -> float:
        return sum(g.usd_per_hour for g in self.groups)

    @property
    def label(self) -> str:
        return " + ".join(f"{g.replicas} x ({g.option})" for g in self.groups)

    def records(self) -> list[dict[str, object]]:
        return [{"model": self.model, "gpu": g.gpu, "tp": g.tp, "replicas": g.replicas} for g in self.groups]

    @classmethod
    def of(cls, model: str, counts: Mapping[tuple[str, int], int]) -> Fleet:
        """A fleet from replica counts per (gpu, tp); zero counts are left out, groups in a stable order."""
        return cls(model, tuple(sorted(ReplicaGroup(g, tp, n) for (g, tp), n in counts.items() if n > 0)))


def gpu_options(m: ModelDeployment, scenario: Scenario | None = None) -> list[tuple[str, int]]:
    """Each catalogue GPU at the smallest tensor-parallel degree (1, 2, 4, 8; within a node of the scenario's pool
    for that GPU) where the model fits with room for one max_model_len sequence, plus the model's own (gpu, tp)."""
    assert m.profile is not None
    need = m.engine.max_model_len or catalog.model(m.profile).max_context
    per_node = {p.gpu: p.gpus_per_node for p in scenario.gpu_pool} if scenario is not None else {}
    out = []
    for gpu in catalog.gpu_names():
        for tp in (1, 2, 4, 8):
            if tp <= per_node.get(gpu, 8) and catalog.fits(m.profile, gpu, tp, m.engine.gpu_memory_utilization, need):
                out.append((gpu, tp))
                break
    return out if (m.gpu, m.tp) in out or m.pp > 1 else [*out, (m.gpu, m.tp)]


def source_rate(source: Mapping[str, Any], duration_s: float) -> float:
    """Mean arrival rate of one workload source as configured (req/s); None-free: a trace has none known here."""
    kind = source["kind"]
    if kind in ("poisson", "gamma", "diurnal"):
        return float(source["rate"])
    if kind == "spike":
        return float(source["requests"]) / duration_s
    raise ValueError("a trace source has no configured rate")


def scale_sources(sources: Sequence[Mapping[str, Any]], factor: float) -> list[dict[str, Any]]:
    """Every source's arrivals sped up by `factor` (rates of generators, `rate_scale` of traces, spike sizes);
    lengths, priorities and tenants keep their distributions."""
    out = []
    for s in sources:
        s = dict(s)
        if s["kind"] in ("poisson", "gamma", "diurnal"):
            s["rate"] = s["rate"] * factor
        elif s["kind"] == "spike":
            s["requests"] = max(1, round(s["requests"] * factor))
        else:
            s["rate_scale"] = s.get("rate_scale", 1.0) * factor
        if s.get("requests") is not None and s["kind"] != "spike":
            s["requests"] = max(1, round(s["requests"] * factor))
        out.append(s)
    return out


@dataclass(frozen=True)
class FleetJob:
    """Simulate `fleet` serving the model's share of `scenario`'s workload scaled to `rate_rps` for `duration_s`."""

    scenario: Scenario
    fleet: Fleet
    rate_rps: float
    base_rate_rps: float  # the model's arrival rate in `scenario` as it is (the scale factor's denominator)
    duration_s: float
    seed: int = 0
    keep_requests: bool = False


@dataclass(frozen=True)
class FleetCheck:
    """What one simulation of a fleet at a rate says."""

    fleet: Fleet
    rate_rps: float
    meets: bool
    slo_attainment: float
    ttft_p99_s: float
    e2e_p99_s: float
    slo_ratio_p99: float  # p99 of each request's latency over its class's target (<= 1: SLOs met)
    requests: int
    usd_per_hour: float
    usd_per_million_tokens: float  # output tokens of requests finished ok
    wall_s: float
    request_table: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    def verified(self) -> dict[str, float]:
        return {"slo_attainment": self.slo_attainment, "ttft_p99_s": self.ttft_p99_s, "e2e_p99_s": self.e2e_p99_s}


def fleet_scenario(job: FleetJob) -> Scenario:
    """The scenario a job simulates: the model alone on its fleet (fixed replica counts), on a GPU pool that holds
    exactly the fleet, with every workload source scaled so the model receives `rate_rps`."""
    sc, fleet = job.scenario, job.fleet
    m = sc.models[sc.model_index(fleet.model)]
    data = sc.model_dump(mode="python")
    model = {k: v for k, v in m.model_dump(mode="python").items() if k not in DROPPED_FIELDS}
    first = fleet.groups[0]
    model |= {"gpu": first.gpu, "tp": first.tp, "pp": 1, "replicas": first.replicas}
    if len(fleet.groups) > 1:
        model["deployments"] = [{"gpu": g.gpu, "tp": g.tp, "replicas": g.replicas} for g in fleet.groups]
        model["replicas"] = sum(g.replicas for g in fleet.groups)
    pools: dict[str, dict[str, Any]] = {}
    own = {p.gpu: p for p in sc.gpu_pool}
    for g in fleet.groups:
        p = pools.setdefault(g.gpu, {"gpu": g.gpu, "count": 0, "gpus_per_node": max(8, g.tp)})
        if g.gpu in own:
            net = own[g.gpu]
            p |= {"inter_node_gbps": net.inter_node_gbps, "inter_node_latency_us": net.inter_node_latency_us}
        p["count"] += g.replicas * g.tp
    wl = dict(data["workload"])
    factor = job.rate_rps / job.base_rate_rps
    wl["sources"] = [s | {"models": None} for s in scale_sources(wl["sources"], factor)]
    wl["models"] = {fleet.model: 1.0}
    for s in wl["sources"]:
        if s["kind"] != "trace" and s.get("duration_s") is not None:
            s["duration_s"] = min(s["duration_s"], job.duration_s)
    data |= {
        "name": f"{sc.name}-{fleet.model}-fleet",
        "duration_s": job.duration_s,
        "hard_stop_s": None,
        "gpu_pool": list(pools.values()),
        "models": [model],
        "workload": wl,
        "budget_usd_per_hour": None,
        "actions": [],
        "seed": job.seed,
    }
    data["gateway"] = dict(data["gateway"]) | {"resilience": None}
    return Scenario.model_validate(data, context={"base_dir": sc.base_dir})


def check_fleet(job: FleetJob) -> FleetCheck:
    """Run one job (top level, so process pools and Ray can ship it)."""
    import time

    from odhsim.sim.run import simulate

    t0 = time.perf_counter()
    sc = fleet_scenario(job)
    req = simulate(sc).requests
    return judge(job.fleet, job.rate_rps, req, sc.slos, time.perf_counter() - t0, keep=job.keep_requests)


def judge(
    fleet: Fleet, rate: float, req: pd.DataFrame, slos: Mapping[str, Slo], wall_s: float = 0.0, *, keep: bool = False
) -> FleetCheck:
    """The verdict on a simulated request table: SLOs met at p99 (pooled over classes, see `meets_slos`)."""
    lat = latency_columns(req)
    ok = (req["status"] == "ok").to_numpy()
    ratios = slo_ratios(req, slos)
    tokens = float(req.loc[ok, "output_tokens"].sum())
    hours = float(req["finish_s"].max() if ok.any() else 0.0) / 3600.0
    cost = fleet.usd_per_hour * hours

    def p99(col: str) -> float:
        v = lat[col].to_numpy(dtype=float)
        v = np.where(ok, np.nan_to_num(v, nan=np.inf), np.inf)
        return float(np.percentile(v, 99, method="higher")) if len(v) else float("nan")

    return FleetCheck(
        fleet=fleet,
        rate_rps=rate,
        meets=meets_slos(req, slos),
        slo_attainment=float(np.mean(ratios <= 1.0)) if len(ratios) else 1.0,
        ttft_p99_s=p99("ttft_s"),
        e2e_p99_s=p99("e2e_s"),
        slo_ratio_p99=float(np.percentile(ratios, 99, method="higher")) if len(ratios) else 0.0,
        requests=len(req),
        usd_per_hour=fleet.usd_per_hour,
        usd_per_million_tokens=cost / tokens * 1e6 if tokens else float("nan"),
        wall_s=wall_s,
        request_table=req if keep else None,
    )
