"""The routing framework (pipeline, clamping, hooks), the registry, configuration and named profiles."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

from policies.builtin import REGISTRY, build_default_registry
from policies.errors import PolicyConfigError
from policies.registry import NoParams, PolicyParams, Registry
from policies.routing.config import RouterConfig, build_router
from policies.routing.framework import Router, SchedulerProfile
from policies.routing.pickers import MaxScorePicker
from policies.routing.profiles import profile_names
from policies.routing.scorers import LoadAwareScorer, QueueScorer
from policies.routing.types import EndpointState
from tests.test_policies_helpers import Fixed, eps, req, rng

# ---------------------------------------------------------------- framework


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
        ("scorer", "load-aware-scorer", {"threshold": "many"}, "threshold"),  # <= 0 is not an error: 128
        ("scorer", "prefix-cache-scorer", {"lru_capacity_per_endpoint": 0}, "lru_capacity_per_endpoint"),
        ("scorer", "queue-scorer", {"bogus": 1}, "bogus"),
        ("scorer", "active-request-scorer", {"max_busy_score": 2}, "max_busy_score"),
        ("picker", "max-score-picker", {"k": 1}, "k"),
        ("scorer", "lora-affinity-scorer", {"weight": 1}, "weight"),
        ("filter", "saturation-filter", {"kv_cache_util_threshold": 1.5}, "kv_cache_util_threshold"),
        ("filter", "saturation-filter", {"queue_depth_threshold": 0}, "queue_depth_threshold"),
        ("filter", "prefix-cache-affinity-filter", {"affinity_threshold": 1.2}, "affinity_threshold"),
        ("filter", "prefix-cache-affinity-filter", {"exploration_probability": -0.1}, "exploration_probability"),
        ("filter", "aibrix-imbalance-filter", {"load": "kv"}, "load"),
        ("picker", "least-latency-picker", {"alpha": 0}, "alpha"),
        ("picker", "aibrix-prefix-cache-picker", {"std_factor": -1}, "std_factor"),
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
        "running-requests-size-scorer",
        "running-requests-scorer",  # the deprecated alias
        "kv-cache-utilization-scorer",
        "load-aware-scorer",
        "prefix-cache-scorer",
        "active-request-scorer",
        "token-load-scorer",
        "session-affinity-scorer",
        "lora-affinity-scorer",
    }
    assert {"max-score-picker", "random-picker", "weighted-random-picker", "round-robin-picker"} <= set(
        REGISTRY.names("picker")
    )
    assert {"least-latency-picker", "aibrix-prefix-cache-picker"} <= set(REGISTRY.names("picker"))
    assert set(REGISTRY.names("filter")) == {
        "low-queue-filter",
        "fresh-metrics-filter",
        "saturation-filter",
        "prefix-cache-affinity-filter",
        "aibrix-imbalance-filter",
    }
    import policies.registry

    assert not hasattr(policies.registry, "REGISTRY")  # the filled registry is policies.builtin's (no back-import)
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
        (
            {"profile": "nope"},
            "known profiles: aibrix-prefix-cache, kv-aware, least-latency, least-request, llm-d-default",
        ),
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
            {**LONG_FORM, "plugins": [{"name": "q", "type": "load-aware-scorer", "params": {"threshold": 1.5}}]},
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


def test_new_profiles_spell_out_their_plugins() -> None:
    latency = build_router({"profile": "least-latency"}, rng())
    assert latency.filters == () and latency.scorers == () and latency.picker.TYPE == "least-latency-picker"
    aibrix = build_router({"profile": "aibrix-prefix-cache"}, rng())
    assert [f.TYPE for f in aibrix.filters] == ["aibrix-imbalance-filter"] and aibrix.scorers == ()
    assert aibrix.picker.TYPE == "aibrix-prefix-cache-picker" and aibrix.filters[0].abs_count == 8
