"""Knative Pod Autoscaler: hand-computed sequences (1 s samples, a decision every 2 s after the sample)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from policies.autoscaling.config import AutoscalerConfig, build_autoscaler
from policies.autoscaling.kpa import KnativePodAutoscaler, KpaParams
from policies.autoscaling.types import ScaleDecision, ScalingMetrics
from policies.errors import PolicyConfigError
from policies.registry import Registry


def kpa(**params: object) -> KnativePodAutoscaler:
    return KnativePodAutoscaler(KpaParams(**params))


def run(
    a: KnativePodAutoscaler,
    load: Callable[[int], float],
    ready: Callable[[int], int] | int,
    until: int,
    start: int = 0,
) -> dict[int, ScaleDecision]:
    """Observe load(t) at every second t in [start, until]; decide at every even t, right after its sample."""
    out = {}
    for t in range(start, until + 1):
        r = ready(t) if callable(ready) else ready
        a.observe(ScalingMetrics(now=float(t), ready_replicas=r, in_flight=load(t), arrivals_per_s=load(t)))
        if t % 2 == 0:
            out[t] = a.decide(float(t))
    return out


def test_defaults_are_knatives() -> None:
    p = KpaParams()
    assert p.resolve_target() == (pytest.approx(70.0), 100.0)
    assert (p.stable_window_s, p.panic_window_percentage, p.panic_threshold) == (60.0, 10.0, 2.0)
    assert (p.max_scale_up_rate, p.max_scale_down_rate, p.target_burst_capacity) == (1000.0, 2.0, 211.0)
    assert (p.scale_to_zero_grace_period_s, p.initial_scale, p.min_replicas) == (30.0, 1, 1)
    assert kpa().panic_window_s == pytest.approx(6.0)


def test_target_resolution() -> None:
    assert KpaParams(container_concurrency=10).resolve_target() == (pytest.approx(7.0), 10.0)
    assert KpaParams(metric="rps").resolve_target() == (pytest.approx(140.0), 200.0)
    assert KpaParams(target=50).resolve_target() == (pytest.approx(35.0), 50.0)  # utilization still applies
    assert KpaParams(target=50, container_concurrency=20).resolve_target() == (pytest.approx(14.0), 20.0)
    assert KpaParams(target=50, target_utilization=1.0).resolve_target() == (50.0, 50.0)


def test_steady_concurrency_140_with_target_70_gives_2() -> None:
    d = run(kpa(), lambda t: 140.0, ready=2, until=120)
    assert {x.desired for x in d.values()} == {2}
    assert not any(x.panic for x in d.values())
    # from 3 ready the same load asks for 2 (floor(3 / 2) = 1 does not bind)
    assert run(kpa(), lambda t: 140.0, ready=3, until=10)[10].desired == 2


def test_rps_metric_uses_arrivals() -> None:
    d = run(kpa(metric="rps"), lambda t: 280.0, ready=2, until=20)
    assert d[20].desired == 2  # 280 / 140


def test_first_decision_before_metrics_is_initial_scale() -> None:
    assert kpa().decide(0.0).desired == 1
    assert kpa(initial_scale=3).decide(0.0).desired == 3
    assert kpa(initial_scale=3, max_replicas=2).decide(0.0).desired == 2


def burst(t: int) -> float:
    return 700.0 if 60 <= t <= 65 else 70.0


def test_burst_enters_panic_and_leaves_after_a_full_stable_window() -> None:
    d = run(kpa(max_replicas=100), burst, ready=2, until=140)
    assert d[58].desired == 1 and not d[58].panic  # 70 / 70 = 1, floor(2 / 2) = 1
    # t=62: panic buckets 57..62 = 3 x 70 + 3 x 700 -> 385 -> ceil(5.5) = 6; 6 / 2 = 3 >= 2
    # stable buckets 3..62 = 57 x 70 + 3 x 700 -> 101.5 -> 2; desired max(2, 6) = 6
    assert d[62] == ScaleDecision(6, d[62].reason, panic=True, activator_in_path=d[62].activator_in_path)
    assert "panic" in d[62].reason
    assert d[64].desired == 9  # buckets 59..64: 70 + 5 x 700 -> 595 -> ceil(8.5) = 9
    assert d[66].desired == 9  # 61..66: 5 x 700 + 70 -> 9
    assert d[68].desired == 9  # 63..68 -> 385 -> 6, still over; never decreases in panic
    assert d[70].desired == 9 and d[70].panic  # 65..70 -> 175 -> 3, below threshold but in panic
    assert d[128].panic and d[128].desired == 9  # last over at 68: 68 + 60 = 128 is not yet past
    assert not d[130].panic and d[130].desired == 1  # stable: 71..130 all 70 -> 1 (>= floor(2 / 2))


def test_panic_at_60_matches_hand_computation() -> None:
    # t=60: panic buckets 55..60 = 5 x 70 + 700 = 1050 / 6 = 175 -> ceil(2.5) = 3; 3 / 2 = 1.5: no panic
    a = kpa(max_replicas=100)
    d = run(a, burst, ready=2, until=60)
    assert not d[60].panic and d[60].desired == 2  # stable 59 x 70 + 700 over 60 = 80.5 -> 2


def test_never_decreases_while_panicking_even_as_ready_grows() -> None:
    d = run(kpa(max_replicas=100), burst, ready=lambda t: 2 if t < 64 else 9, until=128)
    in_panic = [d[t].desired for t in sorted(d) if d[t].panic]
    assert in_panic and in_panic == sorted(in_panic)
    assert max(in_panic) >= 9


def test_scale_down_is_limited_to_halving_per_decision() -> None:
    a = kpa(max_replicas=100)
    assert run(a, lambda t: 70.0, ready=10, until=4)[4].desired == 5  # wants 1, floor(10 / 2) = 5
    assert run(a, lambda t: 70.0, ready=5, until=8, start=5)[8].desired == 2  # floor(5 / 2)
    assert run(a, lambda t: 70.0, ready=2, until=12, start=9)[12].desired == 1
    b = kpa(max_replicas=100, max_scale_down_rate=4.0)
    assert run(b, lambda t: 70.0, ready=10, until=4)[4].desired == 2  # floor(10 / 4)


def test_scale_up_rate_limits_but_always_allows_one_more() -> None:
    a = kpa(max_replicas=0, max_scale_up_rate=1.1)
    d = run(a, lambda t: 700.0, ready=2, until=4)
    assert d[4].desired == 3  # wants 10; ceil(1.1 * 2) = 3


def test_scale_to_zero_only_after_the_grace_period() -> None:
    a = kpa(min_replicas=0)
    d = run(a, lambda t: 10.0 if t < 10 else 0.0, ready=1, until=110)
    # bucket 9 (the last with traffic) leaves the stable window after t=68: avg_stable == 0 from t=70
    assert all(d[t].desired == 1 for t in range(0, 70, 2))
    assert d[70].desired == 1 and d[70].activator_in_path  # inactive: activator in path, grace starts
    assert d[98].desired == 1  # 28 s into the grace period
    assert d[100].desired == 0 and d[100].activator_in_path  # 30 s
    assert d[110].desired == 0
    # traffic at zero: back to 1, the activator stays in path (no ready pod: excess < 0)
    a.observe(ScalingMetrics(now=111.0, ready_replicas=0, in_flight=3.0, queue_len=3))
    back = a.decide(112.0)
    assert back.desired == 1 and back.activator_in_path


def test_no_scale_to_zero_with_min_replicas_or_when_disabled() -> None:
    idle = lambda t: 0.0  # noqa: E731
    assert {x.desired for x in run(kpa(), idle, ready=1, until=200).values()} == {1}
    assert {x.desired for x in run(kpa(min_replicas=0, enable_scale_to_zero=False), idle, 1, 200).values()} == {1}
    assert {x.desired for x in run(kpa(min_replicas=2), idle, ready=4, until=200).values()} == {2}


def test_never_above_max() -> None:
    d = run(kpa(max_replicas=3), burst, ready=2, until=130)
    assert max(x.desired for x in d.values()) == 3
    assert d[64].panic and d[64].desired == 3


def test_max_zero_is_unbounded() -> None:
    d = run(kpa(max_replicas=0), lambda t: 70_000.0, ready=10, until=2)
    assert d[2].desired == 1000


@pytest.mark.parametrize(
    ("tbc", "ready", "load", "in_path"),
    [
        (211.0, 3, 50.0, False),  # floor(300 - 211 - 50) = 39
        (211.0, 2, 50.0, True),  # floor(200 - 211 - 50) = -61
        (211.0, 4, 150.0, False),  # floor(400 - 211 - 150) = 39
        (211.0, 4, 190.0, True),  # floor(400 - 211 - 190) = -1
        (0.0, 1, 500.0, False),  # 0: only at zero
        (-1.0, 50, 1.0, True),  # -1: always
    ],
)
def test_activator_in_path_by_excess_burst_capacity(tbc: float, ready: int, load: float, in_path: bool) -> None:
    a = kpa(target_burst_capacity=tbc, max_replicas=100)
    d = run(a, lambda t: load, ready=ready, until=6)
    assert d[6].activator_in_path is in_path


def test_activator_with_tbc_zero_is_in_path_only_at_zero() -> None:
    a = kpa(target_burst_capacity=0.0, min_replicas=0)
    d = run(a, lambda t: 0.0, ready=1, until=40)
    assert d[20].desired == 1 and d[20].activator_in_path  # inactive during the grace period: activator in path
    assert d[40].desired == 0 and d[40].activator_in_path


def test_scale_down_delay_holds_the_largest_recent_desired() -> None:
    # 6 s stable window (3 s panic window): 280 -> 4 pods; load stops at t=20
    # t=22: buckets 17..22 = 3 x 280 / 6 = 140 -> 2
    def load(t: int) -> float:
        return 280.0 if t < 20 else 0.0

    fast = run(kpa(stable_window_s=6, panic_window_percentage=50), load, ready=4, until=40)
    assert (fast[20].desired, fast[22].desired) == (4, 2)
    slow = run(kpa(stable_window_s=6, panic_window_percentage=50, scale_down_delay_s=10), load, ready=4, until=40)
    assert [slow[t].desired for t in (20, 22, 28, 30)] == [4, 4, 4, 2]  # the 4 of t=20 leaves the window at 30


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        KpaParams(max_scale_down_rate=1.0)
    with pytest.raises(ValueError):
        KpaParams(target_burst_capacity=-2)
    with pytest.raises(ValueError):
        KpaParams(stable_window_s=5)
    with pytest.raises(ValueError):
        KpaParams(min_replicas=5, max_replicas=3)
    with pytest.raises(ValueError):
        KpaParams(target_utilization=1.5)
    with pytest.raises(ValueError):
        KpaParams(unknown=1)


def test_config_builds_kpa_and_rejects_bad_params() -> None:
    cfg = AutoscalerConfig.model_validate({"type": "kpa", "params": {"min_replicas": 0, "container_concurrency": 4}})
    a = build_autoscaler(cfg, np.random.default_rng(0))
    assert isinstance(a, KnativePodAutoscaler) and a.target == pytest.approx(2.8)
    assert (cfg.interval_s, cfg.metrics_interval_s) == (2.0, 1.0)
    assert AutoscalerConfig.model_validate("kpa").type == "kpa"
    with pytest.raises(ValueError, match="max_scale_up_rate"):
        AutoscalerConfig.model_validate({"type": "kpa", "params": {"max_scale_up_rate": 0.5}})
    with pytest.raises(ValueError, match="unknown autoscaler"):
        AutoscalerConfig.model_validate({"type": "nope"})
    with pytest.raises(ValueError, match="bogus"):
        build_autoscaler({"type": "kpa", "params": {"bogus": 1}}, np.random.default_rng(0))
    cfg_ok = AutoscalerConfig(type="kpa")
    with pytest.raises(PolicyConfigError, match="autoscaler: unknown"):
        build_autoscaler(cfg_ok, np.random.default_rng(0), registry=Registry())
