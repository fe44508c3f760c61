"""Right-sizing by simulating whole fleets: the cheapest fleet that serves a model's traffic at a target rate
within the scenario's SLOs.

Why whole fleets: a replica's tail latency at rate r is far worse than that of N pooled replicas at N r (a queue
shared by N servers waits less), so a per-replica "SLO throughput" measured on one replica at its p99 is not
additive and over-provisions (the bug of issue 12). Here every candidate is the model alone on N replicas, fed the
scenario's own workload scaled to the target rate, and judged at p99 against `slos` (odhsim.experiments.slo):

1. each GPU option (catalogue GPU x smallest tp that fits): `policies.cost.rightsizing.min_count_meeting`
   (exponential search from one replica, then binary search; the SLO check is monotone in N) finds the fewest
   replicas meeting the SLOs. (Not from a drain rate of one overloaded replica: a continuous-batching replica
   admits hundreds of requests at once and finishes them late, so its completions in a short run understate
   its capacity several-fold and would start the search above the answer.);
2. mixed fleets (the model on two GPU types at once, `models[i].deployments`): for each ordered pair (A, B) of the
   MIXED_TOP cheapest options, A's homogeneous count less one beside the fewest replicas of B that meet the SLOs
   (`min_count_meeting` again), searched only among fleets cheaper than the best homogeneous one. A mix wins when
   the homogeneous count is rounded up a long way (A needs 2.2 replicas' worth: 3 x A, or 2 x A + 1 smaller B).
   (Not by interpolating capacity linearly between the two homogeneous fleets, as `mixed_candidates` does: such a
   mix costs at least as much as the cheaper homogeneous fleet, so no candidate would ever be cheaper.);
3. the cheapest fleet that met the SLOs is verified: simulated again on fresh arrivals (another seed) for the whole
   duration; if it misses, the next cheapest of the fleets that met the SLOs, or the missed one with one more
   replica of its cheapest group if that costs less, is verified instead (at most MAX_TOP_UPS times).

Every search run replays the same workload seed (common random numbers). Searches of different options run as
independent jobs through an executor (odhsim.experiments.executors: inline, local processes or Ray).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from odhsim.errors import OdhsimError
from odhsim.experiments.fleet import Fleet, FleetCheck, FleetJob, ReplicaGroup, check_fleet, gpu_options
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from policies.cost.rightsizing import min_count_meeting

MAX_REPLICAS = 64
MAX_TOP_UPS = 3
MIXED_TOP = 3


class CapacityError(OdhsimError):
    """A search that cannot run (no GPU option fits, a job failed)."""


def run_jobs(jobs: Sequence[Any], fn: Callable[[Any], Any], executor: Any | None = None) -> list[Any]:
    """Results of `fn` over `jobs` in submission order: inline without an executor, else through its `map`
    (outcomes arrive in completion order); a failed job stops the search with its error."""
    if executor is None:
        return [fn(j) for j in jobs]
    by_id = {id(j): i for i, j in enumerate(jobs)}
    out: list[Any] = [None] * len(jobs)
    for o in executor.map(list(jobs), fn):
        if not o.ok:
            raise CapacityError(f"a capacity job failed: {o.error}")
        out[by_id[id(o.job)]] = o.result
    return out


def model_of(scenario: Scenario, name: str) -> ModelDeployment:
    try:
        return scenario.models[scenario.model_index(name)]
    except (KeyError, ValueError, IndexError):
        names = ", ".join(m.name for m in scenario.models)
        raise CapacityError(f"scenario {scenario.name} has no model '{name}' (models: {names})") from None


def mixed_fleets_supported() -> bool:
    """Whether a scenario can serve one model on several GPU types (`models[i].deployments`)."""
    return "deployments" in ModelDeployment.model_fields


@dataclass(frozen=True)
class OptionJob:
    """Find the fewest replicas of (gpu, tp) that meet the SLOs at `template.rate_rps`."""

    template: FleetJob
    gpu: str
    tp: int
    max_replicas: int = MAX_REPLICAS


@dataclass(frozen=True)
class OptionSearch:
    gpu: str
    tp: int
    replicas: int | None  # fewest meeting the SLOs; None: not even max_replicas
    checks: tuple[FleetCheck, ...]  # every fleet simulated, in order

    @property
    def option(self) -> str:
        return f"{self.gpu} x{self.tp}"

    @property
    def best(self) -> FleetCheck | None:
        return next((c for c in self.checks if c.meets and c.fleet.groups[0].replicas == self.replicas), None)


def search_option(job: OptionJob) -> OptionSearch:
    """One option's search, run serially in one worker (module doc, step 1)."""
    t = job.template
    checks: list[FleetCheck] = []

    def meets(n: int) -> bool:
        c = check_fleet(replace(t, fleet=Fleet(t.fleet.model, (ReplicaGroup(job.gpu, job.tp, n),))))
        checks.append(c)
        return c.meets

    found = min_count_meeting(meets, start=1, max_count=job.max_replicas)
    return OptionSearch(job.gpu, job.tp, found.count, tuple(checks))


@dataclass(frozen=True)
class MixJob:
    """Fewest replicas of `second` beside `base` replicas of `first` that meet the SLOs, up to `max_second`."""

    template: FleetJob
    first: tuple[str, int]
    base: int
    second: tuple[str, int]
    max_second: int


def search_mix(job: MixJob) -> tuple[FleetCheck, ...]:
    """One mix's search, serially in one worker (module doc, step 2): every fleet simulated, in order."""
    t = job.template
    checks: list[FleetCheck] = []

    def meets(n: int) -> bool:
        c = check_fleet(replace(t, fleet=Fleet.of(t.fleet.model, {job.first: job.base, job.second: n})))
        checks.append(c)
        return c.meets

    min_count_meeting(meets, start=1, max_count=job.max_second)
    return tuple(checks)


def mix_jobs(template: FleetJob, found: Sequence[OptionSearch], top: int = 3) -> list[MixJob]:
    """The mixes worth searching (module doc, step 2): only fleets cheaper than the best homogeneous one."""
    ranked = sorted((s for s in found if s.best is not None and s.replicas), key=lambda s: (s.best.usd_per_hour,
                    s.option))[:top]  # type: ignore[union-attr]  # fmt: skip
    if len(ranked) < 2:
        return []
    budget = ranked[0].best.usd_per_hour  # type: ignore[union-attr]
    jobs = []
    for a in ranked:
        for b in ranked:
            if a is b or a.replicas is None or a.replicas < 2:
                continue
            unit_a = a.best.usd_per_hour / a.replicas  # type: ignore[union-attr]
            unit_b = b.best.usd_per_hour / b.replicas  # type: ignore[union-attr]
            base = a.replicas - 1
            max_b = math.ceil((budget - base * unit_a) / unit_b - 1e-9) - 1  # strictly cheaper than the budget
            if max_b >= 1:
                jobs.append(MixJob(template, (a.gpu, a.tp), base, (b.gpu, b.tp), max_b))
    return jobs


@dataclass(frozen=True)
class Recommendation:
    """The answer of `rightsize_model`: the pick, its verification, and everything searched on the way."""

    model: str
    target_rps: float
    rate_basis: str  # what the target rate is ("the --rate given", "the workload's mean rate")
    duration_s: float
    options: tuple[OptionSearch, ...]
    mixed: tuple[FleetCheck, ...]  # the mixed fleets simulated (empty when not searched)
    mixed_note: str
    pick: Fleet | None
    verified: FleetCheck | None
    simulations: int
    verify_duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        rec: dict[str, Any] | None = None
        if self.pick is not None and self.verified is not None:
            v = self.verified
            rec = {
                "fleet": [{"model": r["model"], "gpu": r["gpu"], "tp": r["tp"], "replicas": r["replicas"]}
                          for r in self.pick.records()],
                "usd_per_hour": self.pick.usd_per_hour,
                "usd_per_million_tokens": v.usd_per_million_tokens,
                "verified": v.verified() | {"meets_slos": v.meets, "slo_ratio_p99": v.slo_ratio_p99,
                                            "requests": v.requests, "duration_s": self.verify_duration_s},
            }  # fmt: skip
        return {
            "model": self.model,
            "target_rps": self.target_rps,
            "rate_basis": self.rate_basis,
            "duration_s": self.duration_s,
            "recommendation": rec,
            "options": [
                {"gpu": o.gpu, "tp": o.tp, "replicas": o.replicas,
                 "usd_per_hour": (o.best.usd_per_hour if o.best else None),
                 "probes": [{"replicas": c.fleet.groups[0].replicas, "meets_slos": c.meets,
                             "ttft_p99_s": c.ttft_p99_s, "slo_attainment": c.slo_attainment} for c in o.checks]}
                for o in self.options
            ],
            "mixed": [{"fleet": c.fleet.label, "usd_per_hour": c.usd_per_hour, "meets_slos": c.meets,
                       "ttft_p99_s": c.ttft_p99_s} for c in self.mixed],
            "mixed_note": self.mixed_note,
            "simulations": self.simulations,
        }  # fmt: skip


def _top_up(fleet: Fleet) -> Fleet:
    """The fleet with one more replica of its cheapest group."""
    cheapest = min(fleet.groups, key=lambda g: (g.usd_per_hour / g.replicas, g))
    return Fleet(fleet.model, tuple(sorted(replace(g, replicas=g.replicas + (g == cheapest)) for g in fleet.groups)))


def rightsize_model(
    scenario: Scenario,
    model: str,
    target_rps: float,
    base_rps: float,
    *,
    rate_basis: str,
    duration_s: float,
    seed: int = 0,
    executor: Any | None = None,
    options: Iterable[tuple[str, int]] | None = None,
    mixed: bool = True,
    max_replicas: int = MAX_REPLICAS,
) -> Recommendation:
    """The cheapest fleet for `model` at `target_rps` (module doc). `base_rps` is the model's arrival rate in the
    scenario as written; every source is scaled by target / base."""
    m = model_of(scenario, model)
    if m.kind != "llm":
        raise CapacityError(f"model '{model}': right-sizing searches GPU options of LLMs; '{model}' is {m.kind!r}")
    if not target_rps > 0 or not base_rps > 0:
        raise CapacityError(f"model '{model}': the target and the scenario's rate must be > 0 req/s")
    opts = list(options) if options is not None else gpu_options(m, scenario)
    if not opts:
        raise CapacityError(f"model '{model}': no catalogue GPU holds {m.profile} at tp <= 8")
    placeholder = Fleet(model, (ReplicaGroup(opts[0][0], opts[0][1], 1),))
    template = FleetJob(scenario, placeholder, target_rps, base_rps, duration_s, seed)
    searches: list[OptionSearch] = run_jobs(
        [OptionJob(template, g, tp, max_replicas) for g, tp in opts], search_option, executor
    )
    sims = sum(len(s.checks) + 1 for s in searches)
    found = [s for s in searches if s.best is not None]
    passing: list[FleetCheck] = [s.best for s in found if s.best is not None]
    mixed_checks: tuple[FleetCheck, ...] = ()
    note = "not searched"
    if mixed and len(found) >= 2 and mixed_fleets_supported():
        mixes = mix_jobs(template, found, MIXED_TOP)
        mixed_checks = tuple(c for cs in run_jobs(mixes, search_mix, executor) for c in cs)
        sims += len(mixed_checks)
        passing += [c for c in mixed_checks if c.meets]
        note = (f"{len(mixes)} two-type mixes searched ({len(mixed_checks)} fleets cheaper than the best homogeneous "
                f"one simulated, {sum(c.meets for c in mixed_checks)} met the SLOs)")  # fmt: skip
    elif mixed and not mixed_fleets_supported():
        note = "skipped: this odhsim cannot serve one model on several GPU types"
    elif mixed:
        note = "skipped: fewer than two GPU options meet the SLOs"
    if not passing:
        return Recommendation(model, target_rps, rate_basis, duration_s, tuple(searches), mixed_checks, note, None,
                              None, sims)  # fmt: skip
    full = scenario.duration_s or duration_s
    # cheapest first; a fleet that misses on fresh arrivals is replaced by the next cheapest candidate, or by
    # itself with one more replica when that is cheaper
    queue = sorted({c.fleet: c.usd_per_hour for c in passing}.items(), key=lambda kv: (kv[1], kv[0].label))
    for _ in range(1 + MAX_TOP_UPS):
        pick = queue.pop(0)[0]
        verified = check_fleet(verified_job(template, pick, seed, duration_s, full))
        sims += 1
        if verified.meets:
            break
        more = _top_up(pick)
        queue = sorted([*queue, (more, more.usd_per_hour)], key=lambda kv: (kv[1], kv[0].label))
    return Recommendation(model, target_rps, rate_basis, duration_s, tuple(searches), mixed_checks, note, pick,
                          verified, sims, max(duration_s, full))  # fmt: skip


def verified_job(template: FleetJob, fleet: Fleet, seed: int, duration_s: float, full: float) -> FleetJob:
    """The verification run: fresh arrivals (seed + 1) for the scenario's whole duration."""
    return replace(template, fleet=fleet, seed=seed + 1, duration_s=max(duration_s, full))
