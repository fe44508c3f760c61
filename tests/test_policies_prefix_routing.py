"""Prefix-aware routing beyond the scorer: llm-d's prefix-cache affinity filter and AIBrix's prefix-cache router."""

from __future__ import annotations

import pytest

from policies.routing.aibrix import AibrixImbalanceFilter, AibrixPrefixCachePicker, InFlightCounter
from policies.routing.config import build_router
from policies.routing.framework import SchedulerProfile
from policies.routing.prefix_affinity import LinearTtftPredictor, PrefixCacheAffinityFilter
from policies.routing.scorers import PrefixCacheScorer
from policies.routing.types import EndpointState, RouteRequest
from tests.test_policies_helpers import eps, req, rng

BLOCKS = list(range(101, 111))  # a 10-block prompt: 160 tokens of 16


def cached(owner: PrefixCacheScorer | AibrixPrefixCachePicker, coverage: dict[str, int]) -> None:
    """Dispatch the first k blocks of BLOCKS to each endpoint, so its prefix score for BLOCKS is k / 10."""
    for rid, (name, k) in enumerate(coverage.items(), start=1000):
        if k:
            owner.on_dispatch(0.0, req(rid, blocks=BLOCKS[:k], prompt=16 * k), name)


def affinity(
    coverage: dict[str, int], seed: int = 0, **kwargs: object
) -> tuple[PrefixCacheAffinityFilter, list[EndpointState]]:
    prefix = PrefixCacheScorer()
    cached(prefix, coverage)
    flt = PrefixCacheAffinityFilter(rng(seed), **{"exploration_probability": 0.0, **kwargs})  # type: ignore[arg-type]
    flt.bind_prefix(prefix)
    return flt, [EndpointState(name, "m") for name in coverage]


def kept(flt: PrefixCacheAffinityFilter, endpoints: list[EndpointState], r: RouteRequest | None = None) -> list[str]:
    return [e.name for e in flt.filter(0.0, r if r is not None else req(1, blocks=BLOCKS, prompt=160), endpoints)]


# ---------------------------------------------------------------- prefix-cache affinity filter (llm-d)

COVERAGE = {"full": 10, "most": 8, "some": 7, "none": 0}  # prefix scores 1.0, 0.8, 0.7, 0


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.80, ["full", "most"]),  # the default: >= 0.8
        (0.99, ["full"]),  # the strict variant
        (0.70, ["full", "most", "some"]),
        (0.0, ["full", "most", "some", "none"]),  # threshold <= 0 disables the gate
    ],
)
def test_affinity_keeps_endpoints_at_or_above_threshold(threshold: float, expected: list[str]) -> None:
    flt, endpoints = affinity(COVERAGE, affinity_threshold=threshold, max_ttft_penalty_s=0.0)
    assert kept(flt, endpoints) == expected


def test_affinity_keeps_all_without_sticky_endpoints_or_prefix_info() -> None:
    flt, endpoints = affinity({"a": 7, "b": 0})
    assert kept(flt, endpoints) == ["a", "b"]  # nobody >= 0.8
    assert kept(flt, endpoints, req(2, blocks=[])) == ["a", "b"]  # a request without blocks scores 0
    unbound = PrefixCacheAffinityFilter(rng(), exploration_probability=0.0)  # no prefix-cache scorer in the profile
    assert kept(unbound, endpoints) == ["a", "b"]


def test_affinity_single_candidate_draws_no_randomness() -> None:
    g = rng(1)
    flt = PrefixCacheAffinityFilter(g, exploration_probability=0.5)
    before = g.bit_generator.state
    assert kept(flt, [EndpointState("only", "m")]) == ["only"]
    assert g.bit_generator.state == before


def test_affinity_explores_one_percent_of_the_time() -> None:
    flt, endpoints = affinity(COVERAGE, seed=7, exploration_probability=0.01)
    r = req(1, blocks=BLOCKS, prompt=160)
    n = 20_000
    opened = sum(len(flt.filter(0.0, r, endpoints)) == 4 for _ in range(n))
    assert opened / n == pytest.approx(0.01, abs=0.003)  # binomial sd 0.0007
    a, _ = affinity(COVERAGE, seed=7, exploration_probability=0.01)
    b, _ = affinity(COVERAGE, seed=7, exploration_probability=0.01)
    assert [len(a.filter(0.0, r, endpoints)) for _ in range(2000)] == [
        len(b.filter(0.0, r, endpoints)) for _ in range(2000)
    ]  # seeded


@pytest.mark.parametrize(
    ("sticky_waiting", "other_waiting", "leaves"),
    [
        # TTFT = (waiting + 1) * 0.1 + uncached tokens * 1e-4; sticky: 0 uncached, other: 160 uncached
        (0, 0, False),
        (50, 0, False),  # gap 5.1 - 0.116 = 4.984 s
        (51, 0, True),  # gap 5.2 - 0.116 = 5.084 s > 5 s
        (80, 30, False),  # gap 8.1 - 3.116 = 4.984 s
        (81, 30, True),
    ],
)
def test_affinity_leaves_sticky_endpoint_when_its_ttft_is_5s_worse(
    sticky_waiting: int, other_waiting: int, leaves: bool
) -> None:
    flt, _ = affinity({"sticky": 10, "other": 0}, predictor=LinearTtftPredictor())
    endpoints = [
        EndpointState("sticky", "m", waiting=sticky_waiting),
        EndpointState("other", "m", waiting=other_waiting),
    ]
    assert kept(flt, endpoints) == (["sticky", "other"] if leaves else ["sticky"])


def test_affinity_ttft_gate_compares_best_sticky_with_best_other_and_takes_any_predictor() -> None:
    ttft = {"s1": 9.0, "s2": 6.0, "o1": 1.0, "o2": 3.0}
    coverage = {"s1": 10, "s2": 9, "o1": 0, "o2": 5}

    def predictor(e: EndpointState, r: RouteRequest, matched: int) -> float:
        return ttft[e.name]

    flt, endpoints = affinity(coverage)
    flt.predictor = predictor
    assert kept(flt, endpoints) == ["s1", "s2"]  # 6 - 1 = 5 s is not more than 5 s
    ttft["s2"] = 6.01
    assert kept(flt, endpoints) == ["s1", "s2", "o1", "o2"]
    never, _ = affinity(coverage, max_ttft_penalty_s=0.0)  # 0: always stick
    never.predictor = predictor
    assert kept(never, endpoints) == ["s1", "s2"]


def test_linear_ttft_predictor() -> None:
    r = RouteRequest(1, "m", 1000, block_tokens=16)
    assert LinearTtftPredictor()(EndpointState("e", "m", waiting=4), r, 0) == pytest.approx(0.5 + 0.1)
    assert LinearTtftPredictor(0.2, 1e-3)(EndpointState("e", "m"), r, 50) == pytest.approx(0.2 + 0.2)
    assert LinearTtftPredictor()(EndpointState("e", "m"), r, 500) == pytest.approx(0.1)  # never negative


def test_affinity_filter_binds_to_the_profile_prefix_scorer_from_config() -> None:
    router = build_router(
        {
            "plugins": [
                {"name": "gate", "type": "prefix-cache-affinity-filter", "params": {"exploration_probability": 0}},
                {"name": "prefix", "type": "prefix-cache-scorer"},
                {"name": "pick", "type": "random-picker"},
            ],
            "filters": ["gate"],
            "scorers": [{"plugin": "prefix", "weight": 0}],
            "picker": "pick",
        },
        rng(3),
    )
    gate, prefix = router.filters[0], router.scorers[0][0]
    assert gate.prefix is prefix and gate.threshold == 0.8 and gate.max_ttft_penalty_s == 5.0
    endpoints = eps(0, 0, 0, 0)
    first = req(1, blocks=BLOCKS, prompt=160)
    home = router.pick(0.0, first, endpoints).endpoint
    router.on_dispatch(0.0, first, home)
    assert {router.pick(0.0, req(i, blocks=BLOCKS, prompt=160), endpoints).endpoint for i in range(2, 40)} == {home}


# ---------------------------------------------------------------- AIBrix prefix-cache router


@pytest.mark.parametrize(
    ("running", "factor", "expected"),
    [
        ((0, 8), None, ["e0", "e1"]),  # max - min = 8 is not > 8
        ((0, 9), None, ["e0"]),
        ((2, 11, 2), None, ["e0", "e2"]),  # every least-loaded endpoint
        ((5, 5, 5), None, ["e0", "e1", "e2"]),
        ((0, 9, 9), 2.0, ["e0", "e1", "e2"]),  # newer rule: 9 <= 2 * (6 + 1)
        ((0, 0, 0, 9), 2.0, ["e0", "e1", "e2"]),  # 9 > 2 * (2.25 + 1) and gap 9 >= 8
        ((0, 0, 0, 0, 8), 2.0, ["e0", "e1", "e2", "e3"]),  # gap 8 >= 8 under the newer rule
        ((0, 0, 0, 0, 7), 2.0, ["e0", "e1", "e2", "e3", "e4"]),
    ],
)
def test_aibrix_imbalance_filter(running: tuple[int, ...], factor: float | None, expected: list[str]) -> None:
    flt = AibrixImbalanceFilter(imbalance_factor=factor, load="running")
    endpoints = eps(*([0] * len(running)), running=running)
    assert [e.name for e in flt.filter(0.0, req(), endpoints)] == expected


def test_aibrix_imbalance_filter_counts_in_flight_at_dispatch() -> None:
    flt = AibrixImbalanceFilter()
    endpoints = eps(0, 0, running=(50, 0))  # scraped running is ignored in the default in-flight mode
    assert len(flt.filter(0.0, req(), endpoints)) == 2
    for i in range(9):
        flt.on_dispatch(0.0, req(i), "e0")
    flt.on_dispatch(0.0, req(0), "e0")  # the same request twice counts once
    assert [e.name for e in flt.filter(0.0, req(), endpoints)] == ["e1"]
    flt.on_complete(1.0, req(3), "e0", 1.0, True)
    flt.on_complete(1.0, req(3), "e0", 1.0, True)
    assert flt.inflight.count("e0") == 8 and len(flt.filter(0.0, req(), endpoints)) == 2


def test_in_flight_counter_ignores_unknown_completions() -> None:
    c = InFlightCounter()
    c.completed(1, "a")
    c.dispatched(1, "a")
    c.dispatched(1, "b")
    c.completed(1, "a")
    assert (c.count("a"), c.count("b")) == (0, 1)


@pytest.mark.parametrize(
    ("running", "coverage", "expected"),
    [
        # mean 4, sample std sqrt(56 / 3) = 4.32: limit 8.32, so e3 (10 running) is out despite its full match
        ((0, 2, 4, 10), (0, 5, 7, 10), {"e2"}),
        ((0, 2, 4, 10), (0, 5, 5, 10), {"e1"}),  # equal matches: fewer running requests
        ((0, 2, 4, 10), (0, 0, 0, 10), {"e0"}),  # only the overloaded one matches: least loaded
        ((0, 2, 4, 10), (0, 0, 0, 0), {"e0"}),  # no match: least loaded
        ((3, 3, 0, 0), (0, 0, 0, 0), {"e2", "e3"}),  # least-loaded ties at random
        ((3, 3, 9, 0), (6, 6, 0, 0), {"e0", "e1"}),  # equal match and load: random
        ((5, 5, 5, 5), (1, 0, 0, 0), {"e0"}),  # std 0: everyone is within mean + std
    ],
)
def test_aibrix_picker_best_match_within_mean_plus_std(
    running: tuple[int, ...], coverage: tuple[int, ...], expected: set[str]
) -> None:
    picker = AibrixPrefixCachePicker(rng(2), load="running")
    cached(picker, {f"e{i}": k for i, k in enumerate(coverage)})
    endpoints = eps(*([0] * len(running)), running=running)
    r = req(1, blocks=BLOCKS, prompt=160)
    assert {endpoints[picker.pick(0.0, r, endpoints, [0.0] * len(endpoints))].name for _ in range(100)} == expected


def test_aibrix_picker_std_factor() -> None:
    picker = AibrixPrefixCachePicker(rng(), std_factor=0.0, load="running")
    cached(picker, {"e0": 0, "e1": 0, "e2": 10})
    endpoints = eps(0, 0, 0, running=(0, 3, 6))
    assert picker.pick(0.0, req(1, blocks=BLOCKS), endpoints, [0, 0, 0]) == 0  # 6 > mean 3: least loaded


def test_aibrix_picker_keeps_its_own_index_unless_bound() -> None:
    picker = AibrixPrefixCachePicker(rng())
    own = picker.prefix
    picker.on_dispatch(0.0, req(1, blocks=[1, 2]), "e1")
    assert own.index.size("e1") == 2 and picker.inflight.count("e1") == 1
    scorer = PrefixCacheScorer()
    profile = SchedulerProfile([], [(scorer, 0.0)], picker)
    assert picker.prefix is scorer
    profile.on_dispatch(0.0, req(2, blocks=[3]), "e0")
    assert scorer.index.size("e0") == 1 and own.index.size("e0") == 0


def test_aibrix_profile_follows_the_prefix_until_imbalance() -> None:
    router = build_router({"profile": "aibrix-prefix-cache"}, rng(6))
    endpoints = eps(0, 0)
    prompt = req(0, blocks=BLOCKS, prompt=160)
    home = router.pick(0.0, prompt, endpoints).endpoint
    router.on_dispatch(0.0, prompt, home)
    picks = []
    for i in range(1, 13):  # nothing completes: home's in-flight count grows
        r = req(i, blocks=BLOCKS, prompt=160)
        d = router.pick(float(i), r, endpoints).endpoint
        router.on_dispatch(float(i), r, d)
        picks.append(d)
    # with two endpoints, home (k in flight, the other 0) stays within mean + 1 std = k/2 + k/sqrt(2); once home
    # has 9 in flight (9 - 0 > 8) the imbalance filter sends the request to the least loaded
    assert picks[:8] == [home] * 8
    assert picks[8] != home


def test_aibrix_std_rule_spreads_a_hot_prefix_over_three_endpoints() -> None:
    # with n endpoints and k in flight on home only, mean + 1 std = k/n + k/sqrt(n) < k for n >= 3
    router = build_router({"profile": "aibrix-prefix-cache"}, rng(6))
    endpoints = eps(0, 0, 0)
    first, second = req(0, blocks=BLOCKS, prompt=160), req(1, blocks=BLOCKS, prompt=160)
    home = router.pick(0.0, first, endpoints).endpoint
    router.on_dispatch(0.0, first, home)
    assert router.pick(0.0, second, endpoints).endpoint != home
    router.on_complete(1.0, first, home, 1.0, True)
    assert router.pick(1.0, second, endpoints).endpoint == home  # loads equal again: the prefix wins
