"""Routing policies against the formulas of POLICY_REFERENCE.md section 1 (llm-d's endpoint picker)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from policies.builtin import REGISTRY, build_default_registry
from policies.errors import PolicyConfigError
from policies.registry import NoParams, PolicyParams, Registry
from policies.routing.config import RouterConfig, build_router
from policies.routing.filters import FreshMetricsFilter, LowQueueFilter
from policies.routing.framework import Router, SchedulerProfile
from policies.routing.pickers import (
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from policies.routing.prefix_index import PrefixIndex, chain_hashes, root_hash
from policies.routing.profiles import profile_names
from policies.routing.scorers import (
    ActiveRequestScorer,
    KvCacheUtilizationScorer,
    LoadAwareScorer,
    PrefixCacheScorer,
    QueueScorer,
    RunningRequestsScorer,
    SessionAffinityScorer,
    TokenLoadScorer,
)
from policies.routing.types import NO_SESSION, EndpointState, RouteRequest


def eps(*waiting: int, running: tuple[int, ...] = (), kv: tuple[float, ...] = ()) -> list[EndpointState]:
    return [
        EndpointState(
            name=f"e{i}",
            model="m",
            waiting=w,
            running=running[i] if running else 0,
            kv_usage=kv[i] if kv else 0.0,
        )
        for i, w in enumerate(waiting)
    ]


def req(rid: int = 1, blocks: list[int] | None = None, prompt: int = 100, session: int = NO_SESSION) -> RouteRequest:
    ids = np.asarray(blocks if blocks is not None else [], dtype=np.int64)
    return RouteRequest(request_id=rid, model="m", prompt_tokens=prompt, block_ids=ids, session=session)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- scorers (table-driven)


@pytest.mark.parametrize(
    ("waiting", "expected"),
    [
        ((10, 5, 0), [0.0, 0.5, 1.0]),
        ((3, 3, 3), [1.0, 1.0, 1.0]),
        ((7,), [1.0]),
        ((0, 4), [1.0, 0.0]),
        ((2, 6, 4, 10), [1.0, 0.5, 0.75, 0.0]),
    ],
)
def test_queue_scorer_min_max(waiting: tuple[int, ...], expected: list[float]) -> None:
    assert QueueScorer().score(0.0, req(), eps(*waiting)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("running", "expected"),
    [((10, 5, 0), [0.0, 0.5, 1.0]), ((4, 4), [1.0, 1.0]), ((1, 3), [1.0, 0.0])],
)
def test_running_requests_scorer_min_max(running: tuple[int, ...], expected: list[float]) -> None:
    endpoints = eps(*([0] * len(running)), running=running)
    assert RunningRequestsScorer().score(0.0, req(), endpoints) == pytest.approx(expected)


@pytest.mark.parametrize(("usage", "expected"), [(0.3, 0.7), (0.0, 1.0), (1.0, 0.0), (0.95, 0.05)])
def test_kv_cache_utilization_scorer(usage: float, expected: float) -> None:
    assert KvCacheUtilizationScorer().score(0.0, req(), eps(0, kv=(usage,))) == pytest.approx([expected])


@pytest.mark.parametrize(
    ("threshold", "waiting", "expected"),
    [(128, 0, 0.5), (128, 64, 0.25), (128, 128, 0.0), (128, 200, 0.0), (128, 1, 0.5 * 127 / 128), (10, 5, 0.25)],
)
def test_load_aware_scorer(threshold: int, waiting: int, expected: float) -> None:
    assert LoadAwareScorer(threshold).score(0.0, req(), eps(waiting)) == pytest.approx([expected])


def test_active_request_scorer_counts_dispatch_and_complete() -> None:
    s = ActiveRequestScorer()
    endpoints = eps(0, 0, 0)
    assert s.score(0.0, req(), endpoints) == [1.0, 1.0, 1.0]
    s.on_dispatch(0.0, req(1), "e0")
    s.on_dispatch(0.0, req(2), "e0")
    s.on_dispatch(0.0, req(3), "e1")
    assert [s.count(n) for n in ("e0", "e1", "e2")] == [2, 1, 0]
    assert s.score(0.0, req(), endpoints) == pytest.approx([0.0, 0.5, 1.0])
    s.on_complete(1.0, req(1), "e0", 1.0, True)
    assert s.score(1.0, req(), endpoints) == pytest.approx([0.0, 0.0, 1.0])
    s.on_complete(1.0, req(1), "e0", 1.0, True)  # a second completion of the same request changes nothing
    s.on_complete(1.0, req(99), "e2", 1.0, False)  # nor does one never dispatched
    assert [s.count(n) for n in ("e0", "e1", "e2")] == [1, 1, 0]
    s.on_dispatch(1.0, req(3), "e1")  # the same request to the same endpoint counts once
    assert s.count("e1") == 1


def test_active_request_scorer_idle_threshold_busy_score_and_timeout() -> None:
    s = ActiveRequestScorer(idle_threshold=1, max_busy_score=0.5, request_timeout_s=10.0)
    for rid, ep in [(1, "e0"), (2, "e0"), (3, "e0"), (4, "e0"), (5, "e1"), (6, "e1")]:
        s.on_dispatch(0.0, req(rid), ep)
    s.on_dispatch(5.0, req(7), "e2")
    # counts 4, 2, 1: e2 idle (<= 1) -> 1; busy: (4 - c) / 4 * 0.5
    assert s.score(5.0, req(), eps(0, 0, 0)) == pytest.approx([0.0, 0.25, 1.0])
    assert s.score(10.0, req(), eps(0, 0, 0)) == pytest.approx([1.0, 1.0, 1.0])  # the t=0 ones expired
    assert [s.count(n) for n in ("e0", "e1", "e2")] == [0, 0, 1]
    s.on_complete(11.0, req(1), "e0", 11.0, True)  # completion after expiry: no negative count
    assert s.count("e0") == 0


def test_token_load_scorer_without_prefix() -> None:
    s = TokenLoadScorer(queue_threshold_tokens=10_000, output_ratio=1.5)
    r1 = req(1, prompt=1000)
    # load of a 1000-token prompt = 1000 uncached + 1500 estimated output
    assert s.score(0.0, r1, eps(0, 0)) == pytest.approx([0.75, 0.75])
    s.on_dispatch(0.0, r1, "e0")
    assert s.inflight_tokens("e0") == 2500
    assert s.score(0.0, req(2, prompt=1000), eps(0, 0)) == pytest.approx([0.5, 0.75])
    assert s.score(0.0, req(3, prompt=20_000), eps(0, 0)) == pytest.approx([0.0, 0.0])  # capped at threshold
    s.on_complete(1.0, r1, "e0", 1.0, True)
    assert s.inflight_tokens("e0") == 0


def test_token_load_uses_prefix_hits_for_uncached_tokens() -> None:
    prefix, tokens = PrefixCacheScorer(), TokenLoadScorer(queue_threshold_tokens=1000)
    router = SchedulerProfile([], [(prefix, 1.0), (tokens, 1.0)], RoundRobinPicker())
    assert tokens.prefix is prefix  # wired by the profile
    blocks = [11, 12, 13, 14]
    first = RouteRequest(1, "m", 64, block_ids=np.array(blocks), block_tokens=16)
    router.on_dispatch(0.0, first, "e0")  # no pick: the load is computed at dispatch
    assert tokens.inflight_tokens("e0") == 64 + 96
    second = RouteRequest(2, "m", 64, block_ids=np.array(blocks), block_tokens=16)
    # e0 holds all four blocks: uncached 0 -> load 96, T = 160 + 96; e1: 64 + 96
    assert tokens.score(0.0, second, eps(0, 0)) == pytest.approx([1 - 256 / 1000, 1 - 160 / 1000])
    # through pick -> dispatch: the load scored for the chosen endpoint is what gets added
    decision = router.pick(0.0, second, [EndpointState("e0", "m")])
    router.on_dispatch(0.0, second, decision.endpoint)
    assert tokens.inflight_tokens("e0") == 160 + 96
    router.on_complete(1.0, first, "e0", 1.0, True)
    router.on_complete(1.0, second, "e0", 1.0, True)
    assert tokens.inflight_tokens("e0") == 0


@pytest.mark.parametrize(
    ("session", "last", "expected"),
    [(7, "e1", [0.0, 1.0, 0.0]), (NO_SESSION, None, [0.0, 0.0, 0.0]), (8, "e1", [0.0, 0.0, 0.0])],
)
def test_session_affinity(session: int, last: str | None, expected: list[float]) -> None:
    s = SessionAffinityScorer()
    s.on_dispatch(0.0, req(1, session=7), "e1")
    s.on_dispatch(0.0, req(2, session=NO_SESSION), "e2")  # no session: nothing recorded
    assert s.score(0.0, req(3, session=session), eps(0, 0, 0)) == expected


# ---------------------------------------------------------------- prefix index


def test_chained_hashes_name_the_whole_prefix() -> None:
    root = root_hash("m")
    a = chain_hashes(root, [1, 2, 3])
    b = chain_hashes(root, [1, 2, 4])
    c = chain_hashes(root, [2, 1, 3])
    assert len(a) == 3 and len(set(a)) == 3
    assert a[:2] == b[:2] and a[2] != b[2]  # a shared prefix, then divergence
    assert not set(a) & set(c)  # order matters: the same blocks in another order share nothing
    assert not set(a) & set(chain_hashes(root_hash("other"), [1, 2, 3]))  # models never share
    assert not set(a) & set(chain_hashes(root_hash("m", salt="t"), [1, 2, 3]))
    assert chain_hashes(root, [1, 2, 3, 4, 5], max_blocks=2) == a[:2]
    assert chain_hashes(root, [-1, 2**63 - 1]) == chain_hashes(root, [2**64 - 1, 2**63 - 1])  # 64-bit ids


def test_hashes_are_stable_across_processes() -> None:
    code = "from policies.routing.prefix_index import *; print(chain_hashes(root_hash('m'), [1, 2, 3]))"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        outs.add(done.stdout.strip())
    assert outs == {str(chain_hashes(root_hash("m"), [1, 2, 3]))}


def test_match_length_is_the_longest_run_from_the_start() -> None:
    idx = PrefixIndex(100)
    h = chain_hashes(root_hash("m"), [1, 2, 3, 4])
    idx.add("a", h[:3])
    assert idx.match_length("a", h) == 3
    assert idx.match_length("a", h[:2]) == 2
    assert idx.match_length("a", chain_hashes(root_hash("m"), [1, 2, 9, 4])) == 2
    idx.add("b", h[1:])  # b lost the first block (evicted): nothing after it counts
    assert idx.match_length("b", h) == 0
    assert idx.match_length("b", h) == 0
    assert idx.match_length("a", []) == 0


def test_lru_evicts_least_recently_routed_at_capacity() -> None:
    idx = PrefixIndex(3)
    idx.add("a", [1, 2, 3])
    idx.add("a", [4])
    assert idx.size("a") == 3 and not idx.contains("a", 1) and idx.contains("a", 4)
    idx.add("a", [2])  # touch 2: 3 is now the oldest
    idx.add("a", [5])
    assert [idx.contains("a", h) for h in (2, 3, 4, 5)] == [True, False, True, True]
    idx.forget("a")
    assert idx.size("a") == 0
    with pytest.raises(ValueError):
        PrefixIndex(0)


def test_prefix_scorer_updates_at_dispatch_not_pick_or_completion() -> None:
    router = build_router({"profile": "prefix-aware"}, rng(0))
    prefix = router.scorers[0][0]
    endpoints = eps(0, 0)
    first = req(1, blocks=[5, 6, 7, 8])
    decision = router.pick(0.0, first, endpoints)
    assert prefix.index.size(decision.endpoint) == 0  # picking alone records nothing
    router.on_dispatch(0.0, first, decision.endpoint)
    assert prefix.index.size(decision.endpoint) == 4
    router.on_complete(1.0, first, decision.endpoint, 1.0, True)
    assert prefix.index.size(decision.endpoint) == 4
    half = req(2, blocks=[5, 6, 1, 2])
    want = [0.5 if e.name == decision.endpoint else 0.0 for e in endpoints]
    assert prefix.score(0.0, half, endpoints) == want
    assert router.pick(0.0, half, endpoints).endpoint == decision.endpoint
    assert prefix.score(0.0, req(3, blocks=[]), endpoints) == [0.0, 0.0]  # no blocks: 0 everywhere


def test_prefix_scorer_caps_blocks_to_match() -> None:
    s = PrefixCacheScorer(max_prefix_blocks_to_match=2)
    r = req(1, blocks=[1, 2, 3, 4])
    assert len(s.hashes(r)) == 2
    s.on_dispatch(0.0, r, "e0")
    assert s.score(0.0, req(2, blocks=[1, 2, 9, 9]), eps(0, 0)) == [1.0, 0.0]


# ---------------------------------------------------------------- framework


class Fixed:
    """A scorer returning fixed raw scores (possibly out of range) and counting dispatches."""

    def __init__(self, scores: list[float], name: str = "fixed") -> None:
        self.scores, self.name, self.dispatched = scores, name, 0

    def score(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[float]:
        return self.scores[: len(endpoints)]

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        return endpoints

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        self.dispatched += 1


def test_framework_clamps_scores_and_sums_weights() -> None:
    profile = SchedulerProfile(
        [], [(Fixed([2.0, -1.0, math.nan, 0.5]), 3.0), (Fixed([0.25, 0.5, 1.0, 0.0]), 2.0)], MaxScorePicker(rng())
    )
    endpoints = eps(0, 0, 0, 0)
    assert profile.totals(0.0, req(), endpoints) == pytest.approx({"e0": 3.5, "e1": 1.0, "e2": 2.0, "e3": 1.5})
    assert profile.pick(0.0, req(), endpoints).endpoint == "e0"
    assert isinstance(profile, Router)
    # unclamped, e0's 5.0 would win; clamped to 1 it loses to e1's 1 + 0.5
    clamped = SchedulerProfile([], [(Fixed([5.0, 1.0]), 1.0), (Fixed([0.0, 0.5]), 1.0)], MaxScorePicker(rng()))
    assert clamped.pick(0.0, req(), eps(0, 0)).endpoint == "e1"


def test_llm_d_default_weights() -> None:
    router = build_router({"profile": "llm-d-default"}, rng())
    assert [(s.name, w) for s, w in router.scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    # waiting 10/5/0 -> 0, .5, 1; kv .5/.0/.25 -> .5, 1, .75; no blocks -> prefix 0
    totals = router.totals(0.0, req(), eps(10, 5, 0, kv=(0.5, 0.0, 0.25)))
    assert totals == pytest.approx({"e0": 1.0, "e1": 3.0, "e2": 3.5})
    assert router.pick(0.0, req(), eps(10, 5, 0, kv=(0.5, 0.0, 0.25))).endpoint == "e2"


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


def test_unhealthy_endpoints_are_dropped_before_filters() -> None:
    profile = build_router({"profile": "round-robin"}, rng())
    endpoints = [EndpointState("a", "m", healthy=False), EndpointState("b", "m")]
    assert {profile.pick(0.0, req(i), endpoints).endpoint for i in range(5)} == {"b"}
    none = profile.pick(0.0, req(), [EndpointState("a", "m", healthy=False)])
    assert none.endpoint is None and none.reason == "no healthy endpoint"


def test_hooks_forwarded_once_per_plugin() -> None:
    shared = Fixed([1.0, 1.0])
    profile = SchedulerProfile([shared], [(shared, 1.0)], MaxScorePicker(rng()))
    profile.on_dispatch(0.0, req(), "e0")
    assert shared.dispatched == 1


def test_bad_scorer_length_and_negative_weight_are_errors() -> None:
    with pytest.raises(RuntimeError, match="returned 1 scores for 2"):
        SchedulerProfile([], [(Fixed([1.0]), 1.0)], MaxScorePicker(rng())).pick(0.0, req(), eps(0, 0))
    with pytest.raises(PolicyConfigError, match="weight"):
        SchedulerProfile([], [(Fixed([1.0]), -1.0)], MaxScorePicker(rng()))


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


# ---------------------------------------------------------------- registry


def test_registry_duplicate_is_an_error() -> None:
    reg = Registry()
    reg.register("scorer", "x", lambda p, r: object(), NoParams)
    with pytest.raises(PolicyConfigError, match="duplicate scorer 'x'"):
        reg.register("scorer", "x", lambda p, r: object(), NoParams)
    reg.register("picker", "x", lambda p, r: object(), NoParams)  # same name, other kind: fine
    with pytest.raises(PolicyConfigError, match="duplicate"):
        build_default_registry().register("scorer", "queue-scorer", QueueScorer.from_params, NoParams)


def test_registry_unknown_lists_known_names() -> None:
    with pytest.raises(PolicyConfigError) as err:
        REGISTRY.build("scorer", "no-such-scorer", {}, rng())
    msg = str(err.value)
    assert "no-such-scorer" in msg and "queue-scorer" in msg and "prefix-cache-scorer" in msg


@pytest.mark.parametrize(
    ("kind", "name", "params", "field"),
    [
        ("scorer", "load-aware-scorer", {"threshold": -1}, "threshold"),
        ("scorer", "prefix-cache-scorer", {"lru_capacity_per_endpoint": 0}, "lru_capacity_per_endpoint"),
        ("scorer", "queue-scorer", {"bogus": 1}, "bogus"),
        ("scorer", "active-request-scorer", {"max_busy_score": 2}, "max_busy_score"),
        ("picker", "max-score-picker", {"k": 1}, "k"),
    ],
)
def test_registry_bad_params_name_policy_and_field(kind: str, name: str, params: dict, field: str) -> None:
    with pytest.raises(PolicyConfigError) as err:
        REGISTRY.build(kind, name, params, rng())
    assert name in str(err.value) and field in str(err.value)


def test_registry_builds_with_params_and_lists_names() -> None:
    s = REGISTRY.build("scorer", "load-aware-scorer", {"threshold": 10}, rng())
    assert isinstance(s, LoadAwareScorer) and s.threshold == 10
    assert set(REGISTRY.names("scorer")) == {
        "queue-scorer",
        "running-requests-scorer",
        "kv-cache-utilization-scorer",
        "load-aware-scorer",
        "prefix-cache-scorer",
        "active-request-scorer",
        "token-load-scorer",
        "session-affinity-scorer",
    }
    assert {"max-score-picker", "random-picker", "weighted-random-picker", "round-robin-picker"} <= set(
        REGISTRY.names("picker")
    )
    from policies.registry import REGISTRY as same

    assert same is REGISTRY
    with pytest.raises(PolicyConfigError):
        Registry().register("scorer", "x", lambda p, r: object(), dict)  # type: ignore[arg-type]
    assert issubclass(NoParams, PolicyParams) and issubclass(PolicyParams, BaseModel)


# ---------------------------------------------------------------- configuration

LONG_FORM = {
    "plugins": [
        {"name": "q", "type": "queue-scorer"},
        {"name": "kv", "type": "kv-cache-utilization-scorer"},
        {"name": "prefix", "type": "prefix-cache-scorer", "params": {"lru_capacity_per_endpoint": 31250}},
        {"name": "best", "type": "max-score-picker"},
    ],
    "filters": [],
    "scorers": [{"plugin": "q", "weight": 2}, {"plugin": "kv", "weight": 2}, {"plugin": "prefix", "weight": 3}],
    "picker": "best",
}


def test_long_form_matches_the_default_profile() -> None:
    a = build_router(LONG_FORM, rng())
    b = build_router(RouterConfig(profile="llm-d-default"), rng())
    assert [(type(s), w) for s, w in a.scorers] == [(type(s), w) for s, w in b.scorers]
    assert [s.name for s, _ in a.scorers] == ["q", "kv", "prefix"] and a.picker.name == "best"
    endpoints = eps(4, 1, 0, kv=(0.2, 0.9, 0.4))
    assert a.totals(0.0, req(), endpoints) == pytest.approx(b.totals(0.0, req(), endpoints))


def test_scorer_weight_defaults_to_one_and_string_shorthand() -> None:
    cfg = RouterConfig.model_validate({**LONG_FORM, "scorers": ["q", {"plugin": "kv"}]})
    assert [(s.plugin, s.weight) for s in cfg.scorers or ()] == [("q", 1.0), ("kv", 1.0)]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"profile": "llm-d-default", "picker": "best"}, "not both"),
        ({"profile": "nope"}, "known profiles: kv-aware, least-request, llm-d-default"),
        ({}, "give `profile`"),
        ({**LONG_FORM, "scorers": [{"plugin": "qq"}]}, "unknown plugin 'qq' in scorers; defined plugins: q, kv"),
        ({**LONG_FORM, "scorers": [{"plugin": "best"}]}, "plugin 'best' in scorers is a picker, not a scorer"),
        ({**LONG_FORM, "picker": "q"}, "plugin 'q' in picker is a scorer, not a picker"),
        ({**LONG_FORM, "filters": ["kv"]}, "is a scorer, not a filter"),
        ({**LONG_FORM, "scorers": ["q", "q"]}, "listed twice"),
        ({**LONG_FORM, "plugins": [*LONG_FORM["plugins"], {"name": "q", "type": "queue-scorer"}]}, "twice"),
        (
            {**LONG_FORM, "plugins": [*LONG_FORM["plugins"], {"name": "z", "type": "zzz-scorer"}]},
            "plugin 'z': unknown type 'zzz-scorer'",
        ),
        (
            {**LONG_FORM, "plugins": [{"name": "q", "type": "load-aware-scorer", "params": {"threshold": 0}}]},
            "plugin 'q': invalid params for scorer 'load-aware-scorer': threshold",
        ),
        ({**LONG_FORM, "scorers": [{"plugin": "q", "weight": -2}]}, "greater than or equal to 0"),
        ({**LONG_FORM, "extra": 1}, "extra"),
    ],
)
def test_config_errors_are_clear(config: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        RouterConfig.model_validate(config)
    assert needle in str(err.value)


def test_build_router_checks_against_the_given_registry() -> None:
    with pytest.raises(PolicyConfigError, match="unknown type 'queue-scorer'"):
        build_router(LONG_FORM, rng(), registry=Registry())


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_builds_and_picks(name: str) -> None:
    router = build_router({"profile": name}, rng(0))
    endpoints = eps(3, 0, 7, kv=(0.5, 0.2, 0.9))
    for i in range(20):
        r = req(i, blocks=[1, 2, i % 3])
        decision = router.pick(float(i), r, endpoints)
        assert decision.endpoint in {"e0", "e1", "e2"}
        router.on_dispatch(float(i), r, decision.endpoint)
        router.on_complete(float(i) + 1, r, decision.endpoint, 1.0, True)


def test_least_request_prefers_fewest_in_flight() -> None:
    router = build_router({"profile": "least-request"}, rng(0))
    endpoints = eps(0, 0, 0)
    picks = []
    for i in range(6):
        d = router.pick(0.0, req(i), endpoints)
        router.on_dispatch(0.0, req(i), d.endpoint)
        picks.append(d.endpoint)
    assert sorted(picks) == ["e0", "e0", "e1", "e1", "e2", "e2"]  # balanced in-flight counts
