"""seed-rule, aibrix-apa, ray-serve and llm-d-saturation: table-driven, hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.autoscaling.aibrix_apa import AibrixApaAutoscaler, ApaParams
from policies.autoscaling.config import build_autoscaler
from policies.autoscaling.llmd_saturation import LlmdSaturationAutoscaler, LlmdSaturationParams
from policies.autoscaling.ray_serve import RayServeAutoscaler, RayServeParams
from policies.autoscaling.registration import AUTOSCALERS, register
from policies.autoscaling.seed_rule import SeedRuleAutoscaler, SeedRuleParams
from policies.autoscaling.types import AUTOSCALER_KIND, Autoscaler, ScalingMetrics
from policies.registry import Registry


def m(t: float, ready: int, **kw: float) -> ScalingMetrics:
    return ScalingMetrics(now=t, ready_replicas=ready, **kw)  # type: ignore[arg-type]


def step(a: Autoscaler, sample: ScalingMetrics) -> int:
    a.observe(sample)
    return a.decide(sample.now).desired


def test_registration_and_build() -> None:
    reg = Registry()
    register(reg)
    assert reg.names(AUTOSCALER_KIND) == sorted(c.TYPE for c in AUTOSCALERS)
    assert reg.names(AUTOSCALER_KIND) == ["aibrix-apa", "kpa", "llm-d-saturation", "ray-serve", "seed-rule"]
    with pytest.raises(ValueError, match="duplicate"):
        register(reg)
    for name in reg.names(AUTOSCALER_KIND):
        a = build_autoscaler({"type": name, "params": {"min_replicas": 0, "max_replicas": 4}}, np.random.default_rng(1))
        assert isinstance(a, Autoscaler)
        assert 0 <= a.decide(0.0).desired <= 4


# ---- seed-rule -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "sample", "expected"),
    [
        ({}, m(0, 2, queue_len=51), 3),  # queue > 50: +1
        ({}, m(0, 2, queue_len=50), 2),  # not > 50
        ({}, m(0, 2, pending_replicas=1, queue_len=80), 4),  # current counts starting replicas
        ({"min_replicas": 0}, m(0, 0, in_flight=1, queue_len=1), 1),  # traffic at zero: cold start
        ({"min_replicas": 0}, m(0, 3, seconds_since_last_request=300), 0),  # idle 5 min, min 0: to zero
        ({"min_replicas": 0}, m(0, 3, seconds_since_last_request=299), 3),
        ({}, m(0, 3, seconds_since_last_request=300), 2),  # idle, min 1: -1
        ({}, m(0, 1, seconds_since_last_request=900), 1),  # never below min
        ({"max_replicas": 3}, m(0, 3, queue_len=500), 3),  # never above max
        ({"queue_threshold": 10}, m(0, 1, queue_len=11), 2),
    ],
)
def test_seed_rule_table(params: dict, sample: ScalingMetrics, expected: int) -> None:
    assert step(SeedRuleAutoscaler(SeedRuleParams(**params)), sample) == expected


def test_seed_rule_steps_down_once_per_idle_period() -> None:
    a = SeedRuleAutoscaler(SeedRuleParams())
    assert step(a, m(0, 4, seconds_since_last_request=300)) == 3
    assert step(a, m(2, 3, seconds_since_last_request=302)) == 3  # the idle clock restarted at the step
    assert step(a, m(299, 3, seconds_since_last_request=599)) == 3
    assert step(a, m(300, 3, seconds_since_last_request=600)) == 2


def test_seed_rule_idle_counts_time_since_the_sample() -> None:
    a = SeedRuleAutoscaler(SeedRuleParams(min_replicas=0))
    a.observe(m(0, 2, seconds_since_last_request=290))
    assert a.decide(5.0).desired == 2
    assert a.decide(10.0).desired == 0


# ---- aibrix-apa ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (m(0, 4, in_flight=40), 4),  # r = 1
        (m(0, 4, in_flight=44), 4),  # r = 1.1: not > 1.1
        (m(0, 4, in_flight=60), 6),  # r = 1.5: ceil(4 * 1.5)
        (m(0, 4, in_flight=200), 8),  # r = 5: min(20, ceil(2 * 4))
        (m(0, 4, in_flight=36), 4),  # r = 0.9: not < 0.9
        (m(0, 4, in_flight=20), 2),  # r = 0.5: max(2, floor(4 / 2))
        (m(0, 4, in_flight=4), 2),  # r = 0.1: max(1, 2)
        (m(0, 3, pending_replicas=1, in_flight=45), 6),  # N = 4 (ready + pending), per pod 15: r = 1.5
        (m(0, 0, in_flight=3), 1),  # nothing ready, traffic: 1
        (m(0, 0), 1),  # nothing ready, no traffic: hold 0, bounded to min 1
    ],
)
def test_apa_table(sample: ScalingMetrics, expected: int) -> None:
    assert step(AibrixApaAutoscaler(ApaParams(window_s=1.0)), sample) == expected


def test_apa_other_metrics_and_bounds() -> None:
    kv = AibrixApaAutoscaler(ApaParams(metric="kv_usage", target_value=0.5, window_s=1.0))
    assert step(kv, m(0, 2, kv_usage=0.9)) == 4  # r = 1.8: min(ceil(3.6), 4)
    capped = AibrixApaAutoscaler(ApaParams(window_s=1.0, max_replicas=5))
    assert step(capped, m(0, 4, in_flight=200)) == 5
    floor = AibrixApaAutoscaler(ApaParams(window_s=1.0, min_replicas=3))
    assert step(floor, m(0, 4, in_flight=0)) == 3


def test_apa_scale_down_waits_for_the_cooldown_window() -> None:
    a = AibrixApaAutoscaler(ApaParams(window_s=1.0))
    assert step(a, m(0, 4, in_flight=40)) == 4
    assert step(a, m(10, 4, in_flight=20)) == 4  # wants 2, but 4 was recommended within 300 s
    assert step(a, m(299, 4, in_flight=20)) == 4
    assert step(a, m(300, 4, in_flight=20)) == 2  # the 4 of t=0 has left the window
    assert step(a, m(302, 2, in_flight=60)) == 4  # scale-up is immediate (r = 3: min(6, 4))


def test_apa_averages_over_its_window() -> None:
    a = AibrixApaAutoscaler(ApaParams(window_s=10.0))
    a.observe(m(0, 4, in_flight=80))
    a.observe(m(5, 4, in_flight=0))
    assert a.decide(5.0).desired == 4  # mean 40 per 4 pods = 10: r = 1


# ---- ray-serve -------------------------------------------------------------------------------------------------


def ray(**kw: float) -> RayServeAutoscaler:
    return RayServeAutoscaler(RayServeParams(look_back_period_s=1.0, **kw))  # type: ignore[arg-type]


def test_ray_upscale_after_the_delay() -> None:
    a = ray()
    assert step(a, m(0, 2, in_flight=8)) == 2  # wants ceil(8 / 2) = 4
    assert step(a, m(29, 2, in_flight=8)) == 2
    assert step(a, m(30, 2, in_flight=9)) == 5  # the count computed at the decision that applies
    assert step(a, m(31, 2, in_flight=9)) == 5  # its own target, not the ready count


def test_ray_downscale_after_600_s_and_reset_on_change_of_direction() -> None:
    a = ray()
    assert step(a, m(0, 4, in_flight=8)) == 4
    assert step(a, m(1, 4, in_flight=2)) == 4  # wants 1
    assert step(a, m(300, 4, in_flight=8)) == 4  # back to 4: clock reset
    assert step(a, m(301, 4, in_flight=2)) == 4
    assert step(a, m(600, 4, in_flight=2)) == 4  # 299 s since 301
    assert step(a, m(901, 4, in_flight=2)) == 1


@pytest.mark.parametrize(
    ("params", "samples", "expected"),
    [
        ({"min_replicas": 0}, [m(0, 0, in_flight=1)], 1),  # 0 -> 1 at once
        ({"min_replicas": 0}, [m(0, 0)], 0),
        ({"min_replicas": 0}, [m(0, 1), m(600, 1)], 0),  # 1 -> 0 after the downscale delay
        ({"upscale_delay_s": 0}, [m(0, 1, in_flight=7)], 4),  # ceil(7 / 2), no delay
        ({"upscale_delay_s": 0, "max_replicas": 3}, [m(0, 1, in_flight=70)], 3),
        ({"downscale_delay_s": 0, "min_replicas": 2}, [m(0, 5)], 2),
        ({"upscale_delay_s": 0, "target_ongoing_requests": 5}, [m(0, 1, in_flight=11)], 3),
        ({"upscale_delay_s": 0, "upscaling_factor": 0.5}, [m(0, 2, in_flight=12)], 4),  # 2 * (1 + 2 * 0.5)
    ],
)
def test_ray_table(params: dict, samples: list[ScalingMetrics], expected: int) -> None:
    a = ray(**params)
    got = [step(a, s) for s in samples]
    assert got[-1] == expected


# ---- llm-d-saturation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (m(0, 3, kv_usage=0.85), 4),  # saturated by kv
        (m(0, 3, waiting_per_replica=5), 4),  # saturated by queue
        (m(0, 3, kv_usage=0.75), 4),  # spare kv 0.05 < 0.1
        (m(0, 3, waiting_per_replica=2.5), 4),  # spare queue 2.5 < 3
        (m(0, 3, kv_usage=0.65, waiting_per_replica=1), 3),  # spare 0.15 / 4; after removal 0.975 kv: unsafe
        (m(0, 4, kv_usage=0.3, waiting_per_replica=0.5), 3),  # after removal kv 0.4, waiting 0.67: safe
        (m(0, 2, kv_usage=0.6), 2),  # after removal kv 1.2: unsafe
        (m(0, 2, kv_usage=0.35), 1),  # after removal kv 0.7: spare 0.1 >= 0.1
        (m(0, 1, kv_usage=0.0), 1),  # one replica is never removed
        (m(0, 2, pending_replicas=1, kv_usage=0.95), 3),  # replicas starting: hold
        (m(0, 0, in_flight=2), 1),  # nothing ready, traffic
    ],
)
def test_llmd_table(sample: ScalingMetrics, expected: int) -> None:
    assert step(LlmdSaturationAutoscaler(LlmdSaturationParams()), sample) == expected


def test_llmd_uses_the_peak_of_the_window_and_bounds() -> None:
    a = LlmdSaturationAutoscaler(LlmdSaturationParams())
    a.observe(m(0, 4, kv_usage=0.9))
    assert step(a, m(30, 4, kv_usage=0.1)) == 5  # the 0.9 of 30 s ago is the 1 min peak
    assert step(a, m(61, 4, kv_usage=0.1)) == 3
    capped = LlmdSaturationAutoscaler(LlmdSaturationParams(max_replicas=4))
    assert step(capped, m(0, 4, kv_usage=0.9)) == 4


def test_llmd_scale_to_zero_only_when_configured() -> None:
    idle = m(0, 1, seconds_since_last_request=math.inf)
    assert step(LlmdSaturationAutoscaler(LlmdSaturationParams(min_replicas=0)), idle) == 1
    off = LlmdSaturationParams(min_replicas=0, scale_to_zero_idle_s=600)
    assert step(LlmdSaturationAutoscaler(off), idle) == 0
    assert step(LlmdSaturationAutoscaler(off), m(0, 1, seconds_since_last_request=10)) == 1


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (SeedRuleParams, {"idle_s": 0}),
        (ApaParams, {"max_scale_up_rate": 1.0}),
        (ApaParams, {"metric": "gpu"}),
        (RayServeParams, {"target_ongoing_requests": 0}),
        (LlmdSaturationParams, {"kv_cache_threshold": 1.5}),
        (LlmdSaturationParams, {"min_replicas": 3, "max_replicas": 2}),
    ],
)
def test_params_are_validated(cls: type, bad: dict) -> None:
    with pytest.raises(ValueError):
        cls(**bad)
