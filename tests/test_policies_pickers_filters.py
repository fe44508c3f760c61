"""Pickers and filters against POLICY_REFERENCE.md section 1: llm-d's pickers, the classic baselines, the
saturation filter and the least-latency (EWMA) picker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.routing.config import build_router
from policies.routing.filters import FreshMetricsFilter, LowQueueFilter, SaturationFilter
from policies.routing.framework import SchedulerProfile
from policies.routing.pickers import (
    LeastLatencyPicker,
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from policies.routing.types import EndpointState
from tests.test_policies_helpers import eps, req, rng

# ---------------------------------------------------------------- pickers


def test_max_score_unique_max_consumes_no_randomness() -> None:
    g = rng(3)
    before = g.bit_generator.state
    assert MaxScorePicker(g).pick(0.0, req(), eps(0, 0, 0), [0.1, 0.9, 0.5]) == 1
    assert g.bit_generator.state == before


def test_max_score_ties_random_but_seeded() -> None:
    totals = [1.0, 3.0, 3.0 + 1e-12, 2.0]
    picks = [MaxScorePicker(rng(5)).pick(0.0, req(), eps(0, 0, 0, 0), totals) for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same pick
    p = MaxScorePicker(rng(5))
    seen = [p.pick(0.0, req(), eps(0, 0, 0, 0), totals) for _ in range(200)]
    assert set(seen) == {1, 2}


def test_random_picker_uniform_and_seeded() -> None:
    a = [RandomPicker(rng(1)).pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) for _ in range(1)]
    p, q = RandomPicker(rng(1)), RandomPicker(rng(1))
    xs = [p.pick(0.0, req(), eps(0, 0, 0), [9, 0, 0]) for _ in range(3000)]
    assert xs == [q.pick(0.0, req(), eps(0, 0, 0), [9, 0, 0]) for _ in range(3000)]
    assert xs[0] == a[0]
    counts = np.bincount(xs, minlength=3) / len(xs)
    assert np.allclose(counts, 1 / 3, atol=0.04)


def test_weighted_random_never_picks_zero_when_any_positive() -> None:
    p = WeightedRandomPicker(rng(2))
    assert {p.pick(0.0, req(), eps(0, 0, 0), [0.0, 0.5, 0.0]) for _ in range(500)} == {1}
    assert {p.pick(0.0, req(), eps(0, 0, 0), [0.0, 0.0, 0.0]) for _ in range(500)} == {0, 1, 2}


def test_weighted_random_proportional_to_score() -> None:
    p = WeightedRandomPicker(rng(4))
    xs = [p.pick(0.0, req(), eps(0, 0), [1.0, 3.0]) for _ in range(20_000)]
    assert np.mean(xs) == pytest.approx(0.75, abs=0.015)


def test_round_robin_cycles_in_name_order() -> None:
    p = RoundRobinPicker()
    endpoints = [EndpointState(n, "m") for n in ("b", "a", "c")]
    picks = [endpoints[p.pick(0.0, req(), endpoints, [0, 0, 0])].name for _ in range(7)]
    assert picks == ["a", "b", "c", "a", "b", "c", "a"]
    fewer = [EndpointState(n, "m") for n in ("c", "a")]  # b left: after a comes c
    assert fewer[p.pick(0.0, req(), fewer, [0, 0])].name == "c"
    assert fewer[p.pick(0.0, req(), fewer, [0, 0])].name == "a"


def test_power_of_two_takes_the_less_loaded_of_two() -> None:
    p = PowerOfTwoPicker(rng(0))
    endpoints = eps(0, 3, 10, running=(1, 0, 0))
    picks = [p.pick(0.0, req(), endpoints, [0, 0, 0]) for _ in range(600)]
    assert set(picks) == {0, 1}  # the most loaded is never the lesser of a pair
    assert picks.count(0) > picks.count(1)
    assert PowerOfTwoPicker(rng(0)).pick(0.0, req(), eps(5), [0]) == 0


# ---------------------------------------------------------------- filters


def test_filter_emptying_gives_no_endpoint_with_reason() -> None:
    lq = LowQueueFilter(threshold=3)
    lq.name = "short-queues"
    profile = SchedulerProfile([lq], [], RandomPicker(rng()))
    decision = profile.pick(0.0, req(), eps(5, 9))
    assert decision.endpoint is None and decision.reason == "no endpoint passed filter short-queues"
    assert profile.pick(0.0, req(), eps(5, 3, 9)).endpoint == "e1"


def test_fresh_metrics_filter() -> None:
    endpoints = [EndpointState("old", "m", scraped_at=0.0), EndpointState("new", "m", scraped_at=9.0)]
    assert [e.name for e in FreshMetricsFilter(2.0).filter(10.0, req(), endpoints)] == ["new"]


@pytest.mark.parametrize(
    ("headroom", "waiting", "kv", "kept"),
    [
        (0.0, 0, 0.0, True),
        (0.0, 4, 0.79, True),
        (0.0, 5, 0.0, False),  # waiting < 5 is strict
        (0.0, 0, 0.8, False),  # kv < 0.8 is strict
        (0.0, 9, 0.95, False),
        (0.2, 5, 0.9, True),  # headroom: limits 6 and 0.96
        (0.2, 6, 0.0, False),
        (0.2, 0, 0.96, False),
    ],
)
def test_saturation_filter_thresholds(headroom: float, waiting: int, kv: float, kept: bool) -> None:
    flt = SaturationFilter(headroom=headroom)
    endpoints = [EndpointState("x", "m", waiting=waiting, kv_usage=kv), EndpointState("ok", "m")]
    assert [e.name for e in flt.filter(0.0, req(), endpoints)] == (["x", "ok"] if kept else ["ok"])


def test_saturation_filter_drops_stale_metrics() -> None:
    endpoints = [EndpointState("stale", "m", scraped_at=9.7), EndpointState("fresh", "m", scraped_at=9.85)]
    assert [e.name for e in SaturationFilter().filter(10.0, req(), endpoints)] == ["fresh"]  # older than 200 ms
    assert len(SaturationFilter(metrics_staleness_s=None).filter(10.0, req(), endpoints)) == 2
    assert len(SaturationFilter(metrics_staleness_s=0.5).filter(10.0, req(), endpoints)) == 2


@pytest.mark.parametrize(
    "endpoints",
    [
        eps(5, 9, 20),  # every queue at or over the threshold
        eps(0, 0, kv=(0.8, 0.9)),  # every KV cache at or over the threshold
        [EndpointState("a", "m", scraped_at=0.0), EndpointState("b", "m", scraped_at=1.0)],  # all stale at t=10
    ],
)
def test_saturation_filter_keeps_all_when_none_passes(endpoints: list[EndpointState]) -> None:
    assert SaturationFilter().filter(10.0, req(), endpoints) == endpoints


def test_saturation_filter_in_a_profile_avoids_saturated_endpoints() -> None:
    profile = SchedulerProfile([SaturationFilter()], [], RandomPicker(rng(3)))
    endpoints = eps(7, 2, 0, kv=(0.1, 0.85, 0.5))
    assert {profile.pick(0.0, req(i), endpoints).endpoint for i in range(50)} == {"e2"}


# ---------------------------------------------------------------- least latency (EWMA)


@pytest.mark.parametrize(
    ("alpha", "latencies", "expected"),
    [
        (0.3, [1.0], 1.0),  # the first observation is the estimate
        (0.3, [1.0, 2.0], 1.3),
        (0.3, [1.0, 2.0, 0.5], 0.3 * 0.5 + 0.7 * 1.3),
        (0.5, [4.0, 0.0, 0.0], 1.0),
        (1.0, [3.0, 7.0], 7.0),  # alpha 1: the last observation
    ],
)
def test_least_latency_ewma(alpha: float, latencies: list[float], expected: float) -> None:
    p = LeastLatencyPicker(rng(), alpha=alpha)
    for x in latencies:
        p.on_complete(0.0, req(), "e0", x, True)
    assert p.ewma["e0"] == pytest.approx(expected)


def test_least_latency_explores_unobserved_endpoints_first() -> None:
    p = LeastLatencyPicker(rng(1))
    p.on_complete(0.0, req(), "e0", 0.01, True)  # e0 is fast, but e1 and e2 were never observed
    picks = [p.pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) for _ in range(2000)]
    assert set(picks) == {1, 2}
    assert picks.count(1) / len(picks) == pytest.approx(0.5, abs=0.05)
    p.on_complete(0.0, req(), "e1", 0.5, True)
    assert {p.pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) for _ in range(50)} == {2}


def test_least_latency_lowest_ewma_wins_ties_random() -> None:
    g = rng(2)
    p = LeastLatencyPicker(g)
    for name, x in [("e0", 0.9), ("e1", 0.2), ("e2", 0.4)]:
        p.on_complete(0.0, req(), name, x, True)
    before = g.bit_generator.state
    assert p.pick(0.0, req(), eps(0, 0, 0), [1, 1, 1]) == 1  # totals are ignored
    assert g.bit_generator.state == before  # a unique minimum draws nothing
    p.on_complete(0.0, req(), "e1", 1.2, True)  # e1: 0.3 * 1.2 + 0.7 * 0.2 = 0.5
    assert p.ewma["e1"] == pytest.approx(0.5)
    assert p.pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) == 2
    p.on_complete(0.0, req(), "e2", 0.5, True)  # e2: 0.3 * 0.5 + 0.7 * 0.4 = 0.43
    p.on_complete(0.0, req(), "e1", 0.2, True)  # e1: 0.3 * 0.2 + 0.7 * 0.5 = 0.41
    assert p.pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) == 1

    def tied_picks(seed: int) -> list[int]:
        tied = LeastLatencyPicker(rng(seed))
        for name, x in [("e0", 0.5), ("e1", 0.5), ("e2", 0.9)]:
            tied.on_complete(0.0, req(), name, x, True)
        return [tied.pick(0.0, req(), eps(0, 0, 0), [0, 0, 0]) for _ in range(400)]

    assert set(tied_picks(5)) == {0, 1}
    assert tied_picks(5) == tied_picks(5)  # random ties, but seeded


def test_least_latency_failures_and_bad_latencies() -> None:
    p = LeastLatencyPicker(rng(), alpha=0.5)
    p.on_complete(0.0, req(), "e0", 1.0, True)
    p.on_complete(0.0, req(), "e0", 0.001, False)  # a fast failure is not evidence of a fast endpoint
    p.on_complete(0.0, req(), "e0", math.nan, True)
    p.on_complete(0.0, req(), "e0", -1.0, True)
    assert p.ewma == {"e0": 1.0}
    penalized = LeastLatencyPicker(rng(), alpha=0.5, failure_penalty_s=30.0)
    penalized.on_complete(0.0, req(), "e0", 1.0, True)
    penalized.on_complete(0.0, req(), "e0", 0.001, False)
    assert penalized.ewma == {"e0": 15.5}


def test_least_latency_profile_moves_away_from_a_slow_endpoint() -> None:
    router = build_router({"profile": "least-latency"}, rng(4))
    endpoints = eps(0, 0, 0)
    service = {"e0": 0.2, "e1": 2.0, "e2": 0.5}
    picks = []
    for i in range(60):
        d = router.pick(float(i), req(i), endpoints)
        router.on_dispatch(float(i), req(i), d.endpoint)
        router.on_complete(float(i), req(i), d.endpoint, service[d.endpoint], True)
        picks.append(d.endpoint)
    assert set(picks[:3]) == {"e0", "e1", "e2"}  # each explored once
    assert set(picks[3:]) == {"e0"}
