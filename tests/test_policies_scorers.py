"""Scorers and the prefix index against the formulas of POLICY_REFERENCE.md section 1 (llm-d's endpoint picker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policies.routing.config import build_router
from policies.routing.framework import SchedulerProfile
from policies.routing.pickers import MaxScorePicker, RoundRobinPicker
from policies.routing.prefix_index import PrefixIndex, chain_hashes, root_hash
from policies.routing.scorers import (
    ActiveRequestScorer,
    KvCacheUtilizationScorer,
    LoadAwareScorer,
    LoraAffinityScorer,
    PrefixCacheScorer,
    QueueScorer,
    RunningRequestsScorer,
    SessionAffinityScorer,
    TokenLoadScorer,
)
from policies.routing.types import NO_SESSION, EndpointState, RouteRequest
from tests.test_policies_helpers import eps, req, rng

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


def test_active_request_scorer_idle_threshold_and_busy_score_no_timeout() -> None:
    s = ActiveRequestScorer(idle_threshold=1, max_busy_score=0.5)
    for rid, ep in [(1, "e0"), (2, "e0"), (3, "e0"), (4, "e0"), (5, "e1"), (6, "e1")]:
        s.on_dispatch(0.0, req(rid), ep)
    s.on_dispatch(5.0, req(7), "e2")
    # counts 4, 2, 1: e2 idle (<= 1) -> 1; busy: (4 - c) / 4 * 0.5
    assert s.score(5.0, req(), eps(0, 0, 0)) == pytest.approx([0.0, 0.25, 1.0])
    # llm-d ignores the deprecated requestTimeout: counts stay until the end of the stream, however long
    assert s.score(1e6, req(), eps(0, 0, 0)) == pytest.approx([0.0, 0.25, 1.0])
    s.on_complete(1e6, req(1), "e0", 1e6, False)  # a failed request is released too
    assert [s.count(n) for n in ("e0", "e1", "e2")] == [3, 2, 1]


def test_token_load_scorer_counts_in_flight_tokens_only() -> None:
    s = TokenLoadScorer(queue_threshold_tokens=10_000, output_ratio=1.5)
    r1 = req(1, prompt=1000)
    assert s.score(0.0, r1, eps(0, 0)) == [1.0, 1.0]  # nothing in flight: the incoming request is not counted
    s.on_dispatch(0.0, r1, "e0")
    assert s.inflight_tokens("e0") == 2500  # 1000 input + 1.5 x 1000 estimated output
    assert s.score(0.0, req(2, prompt=1000), eps(0, 0)) == pytest.approx([0.75, 1.0])
    assert s.score(0.0, req(3, prompt=20_000), eps(0, 0)) == pytest.approx([0.75, 1.0])  # same for any size
    for rid in range(10, 14):
        s.on_dispatch(0.0, req(rid, prompt=1000), "e1")
    assert s.score(0.0, req(), eps(0, 0)) == pytest.approx([0.75, 0.0])  # 10,000 tokens: capped at the threshold
    s.on_complete(1.0, r1, "e0", 1.0, True)
    assert s.inflight_tokens("e0") == 0


def test_token_load_ignores_prefix_hits() -> None:
    prefix, tokens = PrefixCacheScorer(), TokenLoadScorer(queue_threshold_tokens=1000)
    router = SchedulerProfile([], [(prefix, 1.0), (tokens, 1.0)], RoundRobinPicker())
    blocks = [11, 12, 13, 14]
    first = RouteRequest(1, "m", 64, block_ids=np.array(blocks), block_tokens=16)
    router.on_dispatch(0.0, first, "e0")
    second = RouteRequest(2, "m", 64, block_ids=np.array(blocks), block_tokens=16)
    router.on_dispatch(0.0, second, "e0")  # all four blocks cached on e0: still 64 + 96 tokens
    assert tokens.inflight_tokens("e0") == 2 * (64 + 96)
    router.on_complete(1.0, first, "e0", 1.0, True)
    router.on_complete(1.0, second, "e0", 1.0, True)
    assert tokens.inflight_tokens("e0") == 0


@pytest.mark.parametrize(
    ("session", "last", "expected"),
    [(7, "e1", [0.0, 1.0, 0.0]), (NO_SESSION, None, [0.0, 0.0, 0.0]), (8, "e1", [0.0, 0.0, 0.0])],
)
def test_session_affinity(session: int, last: str | None, expected: list[float]) -> None:
    s = SessionAffinityScorer()
    s.on_complete(0.0, req(1, session=7), "e1", 1.0, True)
    s.on_complete(0.0, req(2, session=NO_SESSION), "e2", 1.0, True)  # no session: nothing recorded
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


# ---------------------------------------------------------------- LoRA affinity (vllm:lora_requests_info)


def lora_ep(active: set[str], waiting: set[str], max_adapters: int) -> EndpointState:
    return EndpointState(
        "e", "m", active_adapters=frozenset(active), waiting_adapters=frozenset(waiting), max_adapters=max_adapters
    )


@pytest.mark.parametrize(
    ("active", "waiting", "max_adapters", "expected"),
    [
        ({"a"}, set(), 1, 1.0),  # active
        ({"a", "b"}, {"c"}, 3, 1.0),  # active, even with every slot taken
        ({"a"}, {"a"}, 4, 1.0),  # active beats waiting
        (set(), set(), 2, 0.8),  # a free slot
        ({"b"}, set(), 2, 0.8),
        ({"b"}, {"a"}, 4, 0.8),  # waiting, but a free slot comes first (llm-d's order of checks)
        ({"b"}, {"a"}, 2, 0.6),  # waiting, no free slot
        ({"b", "c"}, {"a"}, 3, 0.6),
        ({"b"}, set(), 1, 0.0),  # full, neither active nor waiting
        ({"b"}, {"c"}, 2, 0.0),
        (set(), set(), 0, 0.0),  # a server without LoRA
    ],
)
def test_lora_affinity_scores(active: set[str], waiting: set[str], max_adapters: int, expected: float) -> None:
    endpoint = lora_ep(active, waiting, max_adapters)
    assert LoraAffinityScorer().score(0.0, req(adapter="a"), [endpoint]) == [expected]


def test_lora_affinity_without_adapter_scores_the_base_model_like_llm_d() -> None:
    # llm-d scores the request's target model; a base-model request's target is never a running adapter
    endpoints = [lora_ep({"x"}, set(), 2), lora_ep({"x"}, set(), 1), lora_ep(set(), set(), 0)]
    assert LoraAffinityScorer().score(0.0, req(), endpoints) == [0.8, 0.0, 0.0]
    assert LoraAffinityScorer().score(0.0, req(), eps(0, 0, 0)) == [0.0, 0.0, 0.0]  # no LoRA anywhere: neutral


def test_lora_affinity_steers_a_max_score_pick() -> None:
    router = SchedulerProfile([], [(LoraAffinityScorer(), 1.0)], MaxScorePicker(rng()))
    endpoints = [
        EndpointState("full", "m", active_adapters=frozenset({"b"}), max_adapters=1),
        EndpointState(
            "queued", "m", active_adapters=frozenset({"b"}), waiting_adapters=frozenset({"a"}), max_adapters=2
        ),
        EndpointState("hot", "m", active_adapters=frozenset({"a"}), max_adapters=1),
    ]
    assert router.totals(0.0, req(adapter="a"), endpoints) == {"full": 0.0, "queued": 0.6, "hot": 1.0}
    assert router.pick(0.0, req(adapter="a"), endpoints).endpoint == "hot"
    assert router.pick(0.0, req(adapter="b"), endpoints).endpoint in {"full", "queued"}  # both have b active
