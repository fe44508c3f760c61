"""Hypothesis properties of the routing pipeline: scores in [0,1], filters keep a subset, picks among healthy
candidates, seeded picks; over every registered scorer, filter, picker and named profile."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.builtin import REGISTRY
from policies.routing.config import build_router
from policies.routing.framework import SchedulerProfile
from policies.routing.profiles import profile_names
from policies.routing.types import NO_SESSION, EndpointState, RouteRequest

ADAPTERS = ["a", "b", "c"]
adapters_st = st.frozensets(st.sampled_from(ADAPTERS), max_size=3)
endpoint_st = st.builds(
    EndpointState,
    name=st.sampled_from([f"e{i}" for i in range(16)]),
    model=st.just("m"),
    waiting=st.integers(0, 500),
    running=st.integers(0, 300),
    kv_usage=st.floats(0.0, 1.0),
    scraped_at=st.floats(0.0, 10.0),
    healthy=st.booleans(),
    active_adapters=adapters_st,
    waiting_adapters=adapters_st,
    max_adapters=st.integers(0, 4),
)
endpoints_st = st.lists(endpoint_st, min_size=1, max_size=16, unique_by=lambda e: e.name)
request_st = st.builds(
    RouteRequest,
    request_id=st.integers(0, 10**6),
    model=st.just("m"),
    prompt_tokens=st.integers(0, 200_000),
    block_ids=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40).map(lambda b: np.array(b, np.int64)),
    block_tokens=st.sampled_from([16, 512]),
    session=st.one_of(st.just(NO_SESSION), st.integers(0, 5)),
    adapter=st.one_of(st.none(), st.sampled_from(ADAPTERS)),
)
# filters allowed to leave no candidate (the others fall back to keeping every candidate)
MAY_EMPTY = {"low-queue-filter", "fresh-metrics-filter"}
# (time step, request, endpoint index to complete early or -1) sequences
history_st = st.lists(st.tuples(request_st, st.booleans()), min_size=1, max_size=30)


def _drive(router, endpoints, history):
    """Run a history through a router; returns the picks."""
    picks = []
    for t, (request, complete) in enumerate(history):
        decision = router.pick(float(t), request, endpoints)
        picks.append(decision.endpoint)
        if decision.endpoint is not None:
            router.on_dispatch(float(t), request, decision.endpoint)
            if complete:
                router.on_complete(float(t) + 0.5, request, decision.endpoint, 0.5, True)
    return picks


@settings(max_examples=150, deadline=None)
@given(endpoints=endpoints_st, history=history_st)
def test_every_scorer_scores_in_unit_interval(endpoints, history) -> None:
    healthy = [e for e in endpoints if e.healthy] or endpoints
    for name in REGISTRY.names("scorer"):
        scorer = REGISTRY.build("scorer", name, {}, np.random.default_rng(0))
        for t, (request, complete) in enumerate(history):
            scores = scorer.score(float(t), request, healthy)
            assert len(scores) == len(healthy)
            assert all(0.0 <= s <= 1.0 for s in scores), (name, scores)
            if hasattr(scorer, "on_dispatch"):
                scorer.on_dispatch(float(t), request, healthy[t % len(healthy)].name)
            if complete and hasattr(scorer, "on_complete"):
                scorer.on_complete(float(t), request, healthy[t % len(healthy)].name, 0.1, True)


# Pickers whose parameters have no defaults (a latency model's coefficients come from a profile): typical values.
PICKER_PARAMS = {
    "latency-estimate-picker": {
        "prefill_base_s": 0.01,
        "prefill_per_token_s": 1e-4,
        "decode_base_s": 0.008,
        "decode_per_seq_s": 2e-4,
    },
}


@settings(max_examples=150, deadline=None)
@given(
    endpoints=endpoints_st,
    history=history_st,
    filter_name=st.sampled_from(REGISTRY.names("filter")),
    picker_name=st.sampled_from(REGISTRY.names("picker")),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_filter_keeps_a_subset_and_every_picker_picks_a_candidate(
    endpoints, history, filter_name, picker_name, seed
) -> None:
    g = np.random.default_rng(seed)
    flt = REGISTRY.build("filter", filter_name, {}, g)
    prefix = REGISTRY.build("scorer", "prefix-cache-scorer", {}, g)
    picker = REGISTRY.build("picker", picker_name, PICKER_PARAMS.get(picker_name, {}), g)
    profile = SchedulerProfile([flt], [(prefix, 1.0)], picker)
    healthy = [e for e in endpoints if e.healthy]
    names = {e.name for e in healthy}
    for t, (request, complete) in enumerate(history):
        if healthy:
            kept = flt.filter(float(t), request, list(healthy))
            assert {e.name for e in kept} <= names and len({e.name for e in kept}) == len(kept)
            assert kept or filter_name in MAY_EMPTY
        decision = profile.pick(float(t), request, endpoints)
        if decision.endpoint is None:
            assert not healthy or filter_name in MAY_EMPTY
            continue
        assert decision.endpoint in names
        profile.on_dispatch(float(t), request, decision.endpoint)
        if complete:
            profile.on_complete(float(t) + 0.5, request, decision.endpoint, 0.1 * (t % 7), t % 5 != 0)


@settings(max_examples=60, deadline=None)
@given(endpoints=endpoints_st, history=history_st, profile=st.sampled_from(profile_names()))
def test_pick_is_a_healthy_candidate_and_totals_bounded(endpoints, history, profile) -> None:
    router = build_router({"profile": profile}, np.random.default_rng(1))
    healthy = {e.name for e in endpoints if e.healthy}
    weight_sum = sum(w for _, w in router.scorers)
    for t, (request, _) in enumerate(history):
        totals = router.totals(float(t), request, endpoints)
        assert set(totals) == healthy
        assert all(-1e-12 <= v <= weight_sum + 1e-9 for v in totals.values())
        decision = router.pick(float(t), request, endpoints)
        if healthy:
            assert decision.endpoint in healthy
            router.on_dispatch(float(t), request, decision.endpoint)
        else:
            assert decision.endpoint is None


@settings(max_examples=60, deadline=None)
@given(
    endpoints=endpoints_st,
    history=history_st,
    profile=st.sampled_from(profile_names()),
    seed=st.integers(0, 2**32 - 1),
)
def test_same_seed_same_picks(endpoints, history, profile, seed) -> None:
    a = _drive(build_router({"profile": profile}, np.random.default_rng(seed)), endpoints, history)
    b = _drive(build_router({"profile": profile}, np.random.default_rng(seed)), endpoints, history)
    assert a == b
