"""Hypothesis over random metric sequences for every autoscaler: bounds, KPA panic monotonicity, determinism."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.autoscaling.config import build_autoscaler
from policies.autoscaling.registration import AUTOSCALERS
from policies.autoscaling.types import ScaleDecision, ScalingMetrics

NAMES = [cls.TYPE for cls in AUTOSCALERS]

sample = st.tuples(
    st.sampled_from([0.25, 0.5, 1.0, 1.0, 1.0, 2.0, 5.0, 30.0, 120.0]),  # time step
    st.integers(0, 30),  # ready
    st.integers(0, 4),  # pending
    st.one_of(st.just(0.0), st.floats(0.0, 5000.0)),  # in flight
    st.floats(0.0, 500.0),  # arrivals per s
    st.integers(0, 300),  # queue
    st.floats(0.0, 1.0),  # kv
    st.floats(0.0, 20.0),  # waiting per replica
    st.one_of(st.just(float("inf")), st.floats(0.0, 2000.0)),  # seconds since the last request
    st.booleans(),  # decide after this sample
)

bounds = st.integers(0, 3).flatmap(lambda lo: st.tuples(st.just(lo), st.sampled_from([0, lo, lo + 1, lo + 5, 40])))


def replay(name: str, lo: int, hi: int, steps: list[tuple]) -> list[ScaleDecision]:
    params = {"min_replicas": lo, "max_replicas": max(hi, lo) if hi else 0}
    a = build_autoscaler({"type": name, "params": params}, np.random.default_rng(7))
    out, t = [], 0.0
    for dt, ready, pending, inflight, rate, queue, kv, waiting, since, decide in steps:
        t += dt
        a.observe(ScalingMetrics(t, ready, pending, inflight, rate, queue, kv, waiting, since))
        if decide:
            out.append(a.decide(t))
    out.append(a.decide(t + 1.0))
    return out


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), lohi=bounds, steps=st.lists(sample, min_size=1, max_size=120))
def test_desired_is_always_within_bounds(name: str, lohi: tuple[int, int], steps: list[tuple]) -> None:
    lo, hi = lohi
    top = max(hi, lo) if hi else 0
    for d in replay(name, lo, hi, steps):
        assert d.desired >= lo, d.reason
        assert top == 0 or d.desired <= top, d.reason
        assert d.reason


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), lohi=bounds, steps=st.lists(sample, min_size=1, max_size=80))
def test_deterministic(name: str, lohi: tuple[int, int], steps: list[tuple]) -> None:
    assert replay(name, *lohi, steps) == replay(name, *lohi, steps)


@settings(max_examples=100, deadline=None)
@given(lohi=bounds, steps=st.lists(sample, min_size=1, max_size=150))
def test_kpa_never_scales_down_while_panicking(lohi: tuple[int, int], steps: list[tuple]) -> None:
    decisions = replay("kpa", *lohi, steps)
    for before, after in pairwise(decisions):
        if before.panic and after.panic:
            assert after.desired >= before.desired, (before.reason, after.reason)


@settings(max_examples=60, deadline=None)
@given(lohi=bounds, steps=st.lists(sample, min_size=1, max_size=100))
def test_kpa_activator_in_path_whenever_at_zero(lohi: tuple[int, int], steps: list[tuple]) -> None:
    for d in replay("kpa", *lohi, steps):
        if d.desired == 0:
            assert d.activator_in_path
