"""Cost policies: the $/h budget guard (hand cases) and Mélange right-sizing (hand-checkable MILPs)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cost import (
    BudgetGuard,
    GpuOption,
    InfeasibleWorkload,
    MelangeRightsizer,
    WorkloadBucket,
    homogeneous_cost,
    rightsize,
)
from policies.cost.registration import register
from policies.registry import Registry

# --- budget -------------------------------------------------------------------------------------------------


def test_budget_refusal_reason() -> None:
    d = BudgetGuard(40).allows(36.0, 10.24, model="chat")
    assert not d.allowed and not d
    assert d.reason == (
        "scale-up of chat by 1 replica (+$10.24/h) would exceed the $40/h budget ($36.00/h in use): requests queue"
    )


def test_budget_hand_cases() -> None:
    g = BudgetGuard(40)
    ok = g.allows(26.0, 10.24, model="chat", replicas=2)
    assert ok.allowed and "fits the $40/h budget ($26.00/h in use, $36.24/h after)" in ok.reason
    assert "by 2 replicas" in ok.reason
    assert g.allows(29.76, 10.24).allowed  # exactly at the budget is allowed
    assert not g.allows(29.77, 10.24).allowed
    assert g.allows(50.0, -10.24).allowed  # scale-down always, even over budget
    assert "scale-up by 1 replica" in g.allows(39.0, 2.0).reason
    assert BudgetGuard(40.5).allows(40.0, 1.0).reason.endswith("the $40.50/h budget ($40.00/h in use): requests queue")
    assert g.max_replicas(20.0, 10.24) == 1 and g.max_replicas(19.52, 10.24) == 2 and g.max_replicas(45, 1) == 0
    assert not BudgetGuard(0).allows(0.0, 0.01).allowed
    with pytest.raises(ValueError):
        BudgetGuard(-1)


# --- right-sizing -------------------------------------------------------------------------------------------

CHEAP = GpuOption("cheap", 1.0)
BIG = GpuOption("big", 2.5)


def test_one_bucket_one_big_gpu_beats_three_cheap() -> None:
    """Load 3 req/s; cheap serves 1 req/s at $1/h, big 3 req/s at $2.5/h: 1 big ($2.5) < 3 cheap ($3)."""
    tput = {("cheap", "b"): 1.0, ("big", "b"): 3.0}
    r = rightsize([CHEAP, BIG], [WorkloadBucket("b", 3.0)], tput, baseline={"cheap": 3})
    assert r.counts == {"cheap": 0, "big": 1} and r.chosen() == {"big": 1}
    assert r.cost_usd_per_hour == pytest.approx(2.5)
    assert r.baseline_usd_per_hour == pytest.approx(3.0) and r.saving_usd_per_hour == pytest.approx(0.5)
    assert r.saving_fraction == pytest.approx(0.5 / 3.0)
    assert r.assignment == {"b": {"big": pytest.approx(1.0)}}


def test_two_buckets_the_mix_wins() -> None:
    """short: 1 req/s (cheap 1.0, big 1.2 per replica); long: 2 req/s (cheap 0.5, big 2.0).

    All cheap: 1 + 4 = 5 replicas = $5. All big: 0.83 + 1 -> 2 replicas = $5. Mix: short on 1 cheap, long on
    1 big = $3.5, and no cheaper integer choice exists (with 1 big, the cheap ones must take short's load).
    """
    buckets = [WorkloadBucket("short", 1.0, 256, 128), WorkloadBucket("long", 2.0, 4096, 1024)]
    tput = {("cheap", "short"): 1.0, ("big", "short"): 1.2, ("cheap", "long"): 0.5, ("big", "long"): 2.0}
    r = rightsize([CHEAP, BIG], buckets, tput)
    assert r.counts == {"cheap": 1, "big": 1}
    assert r.cost_usd_per_hour == pytest.approx(3.5)
    assert r.baseline_usd_per_hour == pytest.approx(5.0) and "homogeneous" in r.baseline
    assert r.saving_usd_per_hour == pytest.approx(1.5)
    assert r.assignment["short"] == {"cheap": pytest.approx(1.0)}
    assert r.assignment["long"] == {"big": pytest.approx(1.0)}
    assert r.utilization == {"cheap": pytest.approx(1.0), "big": pytest.approx(1.0)}
    assert homogeneous_cost(CHEAP, buckets, tput) == (5, 5.0)
    assert homogeneous_cost(BIG, buckets, tput) == (2, 5.0)


def test_fractional_split_beats_whole_buckets() -> None:
    """One bucket of 1.5 req/s.

    Options: cheap (1 req/s, $1, at most 1 available) and big (1 req/s, $2.5). Split: 1 cheap takes 1 req/s,
    1 big the other 0.5: $3.5. Whole-bucket: only big can take all of it alone: 2 big = $5.
    """
    opts = [GpuOption("cheap", 1.0, max_count=1), GpuOption("big", 2.5)]
    tput = {("cheap", "b"): 1.0, ("big", "b"): 1.0}
    split = rightsize(opts, [WorkloadBucket("b", 1.5)], tput)
    whole = rightsize(opts, [WorkloadBucket("b", 1.5)], tput, split_buckets=False)
    assert split.counts == {"cheap": 1, "big": 1} and split.cost_usd_per_hour == pytest.approx(3.5)
    assert whole.counts == {"cheap": 0, "big": 2} and whole.cost_usd_per_hour == pytest.approx(5.0)
    assert sum(split.assignment["b"].values()) == pytest.approx(1.0)


def test_infeasible_bucket_is_named() -> None:
    buckets = [WorkloadBucket("short", 1.0), WorkloadBucket("long-in/long-out", 2.0)]
    tput = {("cheap", "short"): 1.0, ("big", "short"): 3.0, ("cheap", "long-in/long-out"): 0.0}
    with pytest.raises(InfeasibleWorkload, match=r"bucket 'long-in/long-out' \(2 req/s\).*cheap, big"):
        rightsize([CHEAP, BIG], buckets, tput)
    # A bucket with no load needs no server.
    r = rightsize([CHEAP, BIG], [buckets[0], WorkloadBucket("long-in/long-out", 0.0)], tput)
    assert r.counts == {"cheap": 1, "big": 0}


def test_availability_limits_can_make_it_infeasible() -> None:
    opts = [GpuOption("cheap", 1.0, max_count=2)]
    with pytest.raises(InfeasibleWorkload, match="availability"):
        rightsize(opts, [WorkloadBucket("b", 3.0)], {("cheap", "b"): 1.0})


def test_input_checks_and_empty_workload() -> None:
    with pytest.raises(ValueError, match="unknown GPU option 'nope'"):
        rightsize([CHEAP], [WorkloadBucket("b", 1.0)], {("nope", "b"): 1.0})
    with pytest.raises(ValueError, match="unknown bucket 'x'"):
        rightsize([CHEAP], [WorkloadBucket("b", 1.0)], {("cheap", "x"): 1.0})
    with pytest.raises(ValueError, match="unknown GPU options"):
        rightsize([CHEAP], [WorkloadBucket("b", 1.0)], {("cheap", "b"): 1.0}, baseline={"h100": 1})
    r = rightsize([CHEAP], [], {}, baseline=10.0)
    assert r.cost_usd_per_hour == 0.0 and r.saving_usd_per_hour == 10.0


def test_gpu_option_of_catalog_prices() -> None:
    """Per-GPU prices (AWS on-demand, odhsim/data/gpus.yaml) and per-GPU-count options."""
    a = GpuOption.of("A100-80GB", 5.1207, gpus=2)
    assert a.name == "A100-80GBx2" and a.cost_usd_per_hour == pytest.approx(10.2414) and a.gpus == 2


def _brute_force(options: list[GpuOption], buckets: list[WorkloadBucket], tput: dict, limit: int) -> float:
    """Cheapest integer counts for one bucket: with fractional assignment, counts y are feasible iff
    sum_g y_g * tput_g >= rate."""
    (b,) = buckets
    best = math.inf
    for ys in itertools.product(range(limit + 1), repeat=len(options)):
        cap = sum(y * tput.get((o.name, b.name), 0.0) for y, o in zip(ys, options, strict=True))
        if cap >= b.rate_rps - 1e-9:
            best = min(best, sum(y * o.cost_usd_per_hour for y, o in zip(ys, options, strict=True)))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 10), st.integers(1, 6)), min_size=1, max_size=3),
    st.integers(1, 12),
)
def test_single_bucket_matches_brute_force(opts: list[tuple[int, int]], rate: int) -> None:
    options = [GpuOption(f"g{i}", float(cost)) for i, (cost, _) in enumerate(opts)]
    tput = {(f"g{i}", "b"): float(t) for i, (_, t) in enumerate(opts)}
    buckets = [WorkloadBucket("b", float(rate))]
    r = rightsize(options, buckets, tput)
    assert r.cost_usd_per_hour == pytest.approx(_brute_force(options, buckets, tput, limit=rate))
    assert r.cost_usd_per_hour <= r.baseline_usd_per_hour + 1e-9  # never worse than the best homogeneous fleet
    capacity = sum(r.counts[o.name] * tput[(o.name, "b")] for o in options)
    assert capacity >= rate - 1e-6


def test_registration_and_policy_object() -> None:
    reg = Registry()
    register(reg)
    rng = np.random.default_rng(0)
    guard = reg.build("budget", "max-usd-per-hour", {"max_usd_per_hour": 40}, rng)
    assert isinstance(guard, BudgetGuard) and not guard.allows(36, 10.24).allowed
    solver = reg.build("rightsizing", "melange", {"split_buckets": False}, rng)
    assert isinstance(solver, MelangeRightsizer) and not solver.split_buckets
    r = solver.solve([CHEAP, BIG], [WorkloadBucket("b", 3.0)], {("cheap", "b"): 1.0, ("big", "b"): 3.0}, 3.0)
    assert r.counts == {"cheap": 0, "big": 1} and r.baseline == "given cost"
