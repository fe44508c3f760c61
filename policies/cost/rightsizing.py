"""Mélange-style GPU right-sizing: the cheapest (heterogeneous) mix of GPU options that serves a workload within
its SLO, as a mixed-integer linear program solved with `scipy.optimize.milp` (HiGHS).

Source: Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by Exploiting GPU Heterogeneity"
(2024), used by the AIBrix GPU optimizer. The workload is split into (input length, output length) buckets, each
with a request rate; the caller profiles, for each GPU option and bucket, the highest request rate one replica
sustains while meeting the SLO (Mélange's "max throughput" table).

Program (g: GPU option, e.g. "A10G x1", "A100-80GB x2"; b: bucket):

    minimise    sum_g cost_g * y_g
    subject to  sum_g x_{b,g} = 1                              for every bucket b with rate_b > 0
                sum_b rate_b * x_{b,g} / tput_{b,g} <= y_g      for every option g
                x_{b,g} in [0, 1]  (0 where tput_{b,g} is 0 / missing: that option cannot meet the SLO there)
                y_g integer, 0 <= y_g <= max_count_g

`x_{b,g}` is the share of bucket b sent to option g. Fractional assignment (the default, as the Mélange paper's
"slices" of a bucket) lets one bucket spread over several GPU types; `split_buckets=False` makes every x binary,
the "each bucket served by one GPU type" form of POLICY_REFERENCE.md. The result names the counts, their cost, and
the saving against a baseline: a given $/h, a given fleet (counts per option), or by default the cheapest
homogeneous fleet (one option serving everything; the comparison Mélange reports).

A bucket with load that no option can serve within the SLO makes the problem infeasible: `InfeasibleWorkload`
names the bucket. Buckets with zero rate are ignored.

The throughput table comes from `max_rate_meeting_slo`: for one option and bucket, the highest arrival rate at which
a caller-supplied check (a short simulation whose latency percentiles meet the SLOs) passes, found by bisection in
log space below a rate known to be unsustainable (the option's saturation throughput), to a stated relative
tolerance and a bounded number of probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field
from scipy.optimize import Bounds, LinearConstraint, milp

from policies.registry import PolicyParams

_EPS = 1e-9


class InfeasibleWorkload(ValueError):
    """No GPU mix serves the workload within its SLO (a bucket nobody can serve, or availability limits)."""


@dataclass(frozen=True, slots=True)
class GpuOption:
    """One way to run a replica: `gpus` GPUs of `gpu_type` at `cost_usd_per_hour` for the whole replica."""

    name: str
    cost_usd_per_hour: float
    gpu_type: str = ""
    gpus: int = 1
    max_count: int | None = None  # availability cap; None: unlimited

    def __post_init__(self) -> None:
        if self.cost_usd_per_hour < 0:
            raise ValueError(f"option '{self.name}': cost_usd_per_hour must be >= 0")
        if self.gpus < 1:
            raise ValueError(f"option '{self.name}': gpus must be >= 1")
        if self.max_count is not None and self.max_count < 0:
            raise ValueError(f"option '{self.name}': max_count must be >= 0")

    @classmethod
    def of(cls, gpu_type: str, price_per_gpu_hour: float, gpus: int = 1, max_count: int | None = None) -> GpuOption:
        """`GpuOption.of("A100-80GB", 5.12, 2)` is named "A100-80GBx2" and costs 2 x the per-GPU price."""
        return cls(f"{gpu_type}x{gpus}", price_per_gpu_hour * gpus, gpu_type, gpus, max_count)


@dataclass(frozen=True, slots=True)
class WorkloadBucket:
    """One (input length, output length) bucket and its request rate (req/s); the lengths only describe it."""

    name: str
    rate_rps: float
    input_tokens: float = 0.0
    output_tokens: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_rps < 0:
            raise ValueError(f"bucket '{self.name}': rate_rps must be >= 0")


@dataclass(frozen=True)
class RightsizingResult:
    counts: dict[str, int]  # replicas per option (every option, zeros included)
    cost_usd_per_hour: float
    baseline_usd_per_hour: float
    baseline: str  # what the baseline is
    assignment: dict[str, dict[str, float]]  # bucket -> option -> share of its load (shares > 0 only)
    utilization: dict[str, float]  # option -> load / capacity of its chosen replicas (options with replicas)

    @property
    def saving_usd_per_hour(self) -> float:
        return self.baseline_usd_per_hour - self.cost_usd_per_hour

    @property
    def saving_fraction(self) -> float:
        return self.saving_usd_per_hour / self.baseline_usd_per_hour if self.baseline_usd_per_hour > 0 else 0.0

    def chosen(self) -> dict[str, int]:
        """Only the options with at least one replica."""
        return {k: v for k, v in self.counts.items() if v > 0}


def _tput(throughput: Mapping[tuple[str, str], float], option: str, bucket: str) -> float:
    value = float(throughput.get((option, bucket), 0.0))
    if value < 0 or math.isnan(value):
        raise ValueError(f"throughput[{option!r}, {bucket!r}] must be >= 0")
    return value


def _check_inputs(
    options: Sequence[GpuOption], buckets: Sequence[WorkloadBucket], throughput: Mapping[tuple[str, str], float]
) -> None:
    if not options:
        raise ValueError("at least one GPU option is needed")
    opt_names = [o.name for o in options]
    bucket_names = [b.name for b in buckets]
    if len(set(opt_names)) != len(opt_names):
        raise ValueError("GPU option names must be unique")
    if len(set(bucket_names)) != len(bucket_names):
        raise ValueError("bucket names must be unique")
    for option, bucket in throughput:
        if option not in opt_names:
            raise ValueError(f"throughput names unknown GPU option '{option}'; options: {', '.join(opt_names)}")
        if bucket not in bucket_names:
            raise ValueError(f"throughput names unknown bucket '{bucket}'; buckets: {', '.join(bucket_names)}")


def homogeneous_cost(
    option: GpuOption, buckets: Sequence[WorkloadBucket], throughput: Mapping[tuple[str, str], float]
) -> tuple[int, float] | None:
    """(replicas, $/h) for serving everything on `option` alone; None if it cannot serve some loaded bucket."""
    load = 0.0
    for b in buckets:
        if b.rate_rps <= 0:
            continue
        t = _tput(throughput, option.name, b.name)
        if t <= 0:
            return None
        load += b.rate_rps / t
    count = max(0, math.ceil(load - 1e-9))
    if option.max_count is not None and count > option.max_count:
        return None
    return count, count * option.cost_usd_per_hour


class RightsizingParams(PolicyParams):
    """`rightsizing` / `melange`: `split_buckets` (default True) allows a bucket's load over several options."""

    split_buckets: bool = True
    mip_rel_gap: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # 0: solve to proven optimality


class MelangeRightsizer:
    __slots__ = ("mip_rel_gap", "split_buckets")

    def __init__(self, split_buckets: bool = True, mip_rel_gap: float = 0.0) -> None:
        p = RightsizingParams(split_buckets=split_buckets, mip_rel_gap=mip_rel_gap)
        self.split_buckets = p.split_buckets
        self.mip_rel_gap = p.mip_rel_gap

    @classmethod
    def from_params(cls, params: RightsizingParams, rng: np.random.Generator) -> MelangeRightsizer:
        return cls(params.split_buckets, params.mip_rel_gap)

    def solve(
        self,
        options: Sequence[GpuOption],
        buckets: Sequence[WorkloadBucket],
        throughput: Mapping[tuple[str, str], float],
        baseline: float | Mapping[str, int] | None = None,
    ) -> RightsizingResult:
        return rightsize(
            options, buckets, throughput, baseline, split_buckets=self.split_buckets, mip_rel_gap=self.mip_rel_gap
        )


def _baseline(
    options: Sequence[GpuOption],
    buckets: Sequence[WorkloadBucket],
    throughput: Mapping[tuple[str, str], float],
    baseline: float | Mapping[str, int] | None,
) -> tuple[float, str]:
    if baseline is None:
        best: tuple[float, str] | None = None
        for o in options:
            h = homogeneous_cost(o, buckets, throughput)
            if h is not None and (best is None or h[1] < best[0] - _EPS):
                best = (h[1], f"cheapest homogeneous fleet: {h[0]} x {o.name}")
        return best if best is not None else (math.nan, "no single option serves every bucket")
    if isinstance(baseline, Mapping):
        by_name = {o.name: o for o in options}
        unknown = [k for k in baseline if k not in by_name]
        if unknown:
            raise ValueError(f"baseline names unknown GPU options: {', '.join(unknown)}")
        cost = sum(by_name[k].cost_usd_per_hour * n for k, n in baseline.items())
        return cost, "given fleet: " + ", ".join(f"{n} x {k}" for k, n in baseline.items())
    return float(baseline), "given cost"


def rightsize(
    options: Sequence[GpuOption],
    buckets: Sequence[WorkloadBucket],
    throughput: Mapping[tuple[str, str], float],
    baseline: float | Mapping[str, int] | None = None,
    *,
    split_buckets: bool = True,
    mip_rel_gap: float = 0.0,
) -> RightsizingResult:
    """Solve the Mélange program (module doc). `throughput[(option, bucket)]`: req/s per replica within the SLO."""
    _check_inputs(options, buckets, throughput)
    loaded = [b for b in buckets if b.rate_rps > 0]
    for b in loaded:
        if all(_tput(throughput, o.name, b.name) <= 0 for o in options):
            raise InfeasibleWorkload(
                f"bucket '{b.name}' ({b.rate_rps:g} req/s) cannot be served within the SLO by any GPU option "
                f"({', '.join(o.name for o in options)}): no option has a positive throughput for it"
            )
    n_opt = len(options)
    pairs = [
        (bi, gi) for bi, b in enumerate(loaded) for gi, o in enumerate(options) if _tput(throughput, o.name, b.name) > 0
    ]
    n_var = n_opt + len(pairs)
    c = np.zeros(n_var)
    c[:n_opt] = [o.cost_usd_per_hour for o in options]
    a = np.zeros((len(loaded) + n_opt, n_var))
    for k, (bi, gi) in enumerate(pairs):
        col = n_opt + k
        b, o = loaded[bi], options[gi]
        a[bi, col] = 1.0
        a[len(loaded) + gi, col] = b.rate_rps / _tput(throughput, o.name, b.name)
    for gi in range(n_opt):
        a[len(loaded) + gi, gi] = -1.0
    lb = np.concatenate([np.ones(len(loaded)), np.full(n_opt, -np.inf)])
    ub = np.concatenate([np.ones(len(loaded)), np.zeros(n_opt)])
    upper = np.concatenate([[np.inf if o.max_count is None else o.max_count for o in options], np.ones(len(pairs))])
    integrality = np.concatenate([np.ones(n_opt), np.full(len(pairs), 0 if split_buckets else 1)])
    base_cost, base_label = _baseline(options, buckets, throughput, baseline)
    if not loaded:
        counts = {o.name: 0 for o in options}
        return RightsizingResult(counts, 0.0, base_cost, base_label, {}, {})
    res = milp(
        c,
        constraints=LinearConstraint(a, lb, ub),
        integrality=integrality,
        bounds=Bounds(np.zeros(n_var), upper),
        options={"mip_rel_gap": mip_rel_gap},
    )
    if res.x is None or res.status not in (0,):
        raise InfeasibleWorkload(
            f"no GPU mix serves the workload within the availability limits (solver: {res.message})"
        )
    y = np.rint(res.x[:n_opt]).astype(int)
    counts = {o.name: int(y[gi]) for gi, o in enumerate(options)}
    assignment: dict[str, dict[str, float]] = {b.name: {} for b in loaded}
    load = np.zeros(n_opt)
    for k, (bi, gi) in enumerate(pairs):
        share = float(res.x[n_opt + k])
        if share > 1e-7:
            b, o = loaded[bi], options[gi]
            assignment[b.name][o.name] = share
            load[gi] += b.rate_rps * share / _tput(throughput, o.name, b.name)
    utilization = {o.name: float(load[gi] / y[gi]) for gi, o in enumerate(options) if y[gi] > 0}
    cost = float(sum(o.cost_usd_per_hour * counts[o.name] for o in options))
    return RightsizingResult(counts, cost, base_cost, base_label, assignment, utilization)


@dataclass(frozen=True, slots=True)
class RateSearch:
    """The answer of `max_rate_meeting_slo`: the highest rate seen to meet the SLO (0.0: not even the floor did),
    the lowest rate known not to (or the unsustainable upper bound), every probe (rate, met) in order, and the
    relative tolerance asked for."""

    rate: float
    failing: float
    probes: tuple[tuple[float, bool], ...]
    rel_tol: float

    @property
    def converged(self) -> bool:
        """Whether the bracket closed to the tolerance (else the probe budget ran out first)."""
        return self.rate == 0.0 or self.failing / self.rate <= 1.0 + self.rel_tol + 1e-12


def max_rate_meeting_slo(
    meets: Callable[[float], bool],
    upper: float,
    *,
    rel_tol: float = 0.05,
    floor_fraction: float = 1.0 / 64.0,
    max_probes: int = 10,
) -> RateSearch:
    """Highest arrival rate r < `upper` with `meets(r)`, to within `rel_tol` of r.

    `upper` must be a rate the option cannot sustain (its saturation throughput): however a short run looks, a
    queue fed faster than it drains grows without bound, so no rate at or above it counts. The search probes
    `floor_fraction * upper` first; if that light load already misses the SLO (a request served alone is too
    slow) the answer is 0. Otherwise it bisects the bracket [meeting, failing] at its geometric mean until
    failing / meeting <= 1 + rel_tol or `max_probes` probes were spent (floor included). `meets` is assumed
    monotone (met below some rate, missed above); the caller keeps its noise down with common random numbers.
    The true rate then lies in [rate, failing): `rate` is conservative by at most rel_tol.
    """
    if not upper > 0 or not math.isfinite(upper):
        raise ValueError(f"upper must be a positive finite rate, got {upper}")
    if not 0 < rel_tol < 1 or not 0 < floor_fraction < 1 or max_probes < 1:
        raise ValueError("need 0 < rel_tol < 1, 0 < floor_fraction < 1 and max_probes >= 1")
    probes: list[tuple[float, bool]] = []

    def probe(rate: float) -> bool:
        met = bool(meets(rate))
        probes.append((rate, met))
        return met

    lo, hi = floor_fraction * upper, upper
    if not probe(lo):
        return RateSearch(0.0, lo, tuple(probes), rel_tol)
    while hi / lo > 1.0 + rel_tol and len(probes) < max_probes:
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return RateSearch(lo, hi, tuple(probes), rel_tol)


@dataclass(frozen=True, slots=True)
class CountSearch:
    """The answer of `min_count_meeting`: the fewest replicas seen to meet the SLOs (None: not even `max_count`)
    and every probe (count, met) in order."""

    count: int | None
    probes: tuple[tuple[int, bool], ...]


def min_count_meeting(meets: Callable[[int], bool], *, start: int = 1, max_count: int = 64) -> CountSearch:
    """Fewest replicas n in [start, max_count] with `meets(n)`, for a check monotone in n (more replicas of the
    same GPU never make the latency percentiles worse). Exponential search up from `start` (start, start+1,
    start+3, start+7, ...: the step doubles) brackets the answer, then binary search closes it: about
    2 log2(n - start) probes. `start` is a count known not to be too many (e.g. the rate over one replica's
    saturation throughput, below which a queue grows without bound), so the search rarely goes far."""
    if not 1 <= start <= max_count:
        raise ValueError(f"need 1 <= start <= max_count, got start={start}, max_count={max_count}")
    probes: list[tuple[int, bool]] = []

    def probe(n: int) -> bool:
        met = bool(meets(n))
        probes.append((n, met))
        return met

    failing, step, n = start - 1, 1, start
    while not probe(n):
        failing = n
        if n == max_count:
            return CountSearch(None, tuple(probes))
        n, step = min(max_count, n + step), step * 2
    while n - failing > 1:
        mid = (n + failing) // 2
        if probe(mid):
            n = mid
        else:
            failing = mid
    return CountSearch(n, tuple(probes))


def mixed_candidates(
    homogeneous: Mapping[str, int], cost: Mapping[str, float], *, top: int = 3, budget: float | None = None
) -> list[dict[str, int]]:
    """Two-type fleets worth simulating, seeded by the best homogeneous ones: for each pair of the `top` cheapest
    options (A needs n_A replicas alone, B n_B), every a in 1..n_A-1 with b = ceil((1 - a/n_A) n_B) replicas of B
    (capacity interpolated linearly between the two homogeneous fleets), kept when cheaper than `budget` (default:
    the cheapest homogeneous fleet). Cheapest first; the caller verifies each by simulation."""
    ranked = sorted(homogeneous, key=lambda o: (homogeneous[o] * cost[o], o))[:top]
    if not ranked:
        return []
    limit = budget if budget is not None else homogeneous[ranked[0]] * cost[ranked[0]]
    out: dict[tuple[tuple[str, int], ...], float] = {}
    for i, a_opt in enumerate(ranked):
        for b_opt in ranked[i + 1 :]:
            for first, second in ((a_opt, b_opt), (b_opt, a_opt)):
                n_a, n_b = homogeneous[first], homogeneous[second]
                for a in range(1, n_a):
                    b = max(1, math.ceil((1.0 - a / n_a) * n_b - 1e-9))
                    c = a * cost[first] + b * cost[second]
                    if c < limit - _EPS:
                        out[tuple(sorted(((first, a), (second, b))))] = c
    return [dict(k) for k, _ in sorted(out.items(), key=lambda kv: (kv[1], kv[0]))]
