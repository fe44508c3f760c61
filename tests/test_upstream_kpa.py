"""KPA details case by case from knative/serving at 98e5ef9.

- pkg/autoscaler/aggregation/bucketing.go + bucketing_test.go `TestTimedFloat64BucketsWindowAverage`: the window
  average ignores buckets after the last write and before the first write of the current run.
- pkg/autoscaler/scaling/autoscaler.go `Scale`: ready pods are counted (podCounter.ReadyCount) when deciding.
- pkg/autoscaler/metrics/stat.go / the queue-proxy: the concurrency recorded is AverageConcurrentRequests, a time
  average over the reporting period.
- pkg/autoscaler/config/config.go defaultConfig: TargetBurstCapacity 211.
"""

from __future__ import annotations

import pytest

from policies.autoscaling.kpa import KnativePodAutoscaler, KpaParams, _Buckets
from policies.autoscaling.types import ScalingMetrics

T0 = 1000.0

# bucketing_test.go TestTimedFloat64BucketsWindowAverage, window 5 s, granularity 1 s: ("record" | "avg", t, value)
WINDOW_STEPS = [
    ("record", 0.0, 1.0),
    ("avg", 0.0, 1.0),  # firstWrite: not 1 / 5
    ("record", 1.0, 2.0),
    ("record", 2.0, 3.0),
    ("record", 3.0, 4.0),
    ("record", 4.0, 5.0),
    ("avg", 4.0, 15 / 5),
    ("avg", 3.6, 15 / 5),  # now lags behind the last write
    ("avg", 6.0, (15 - 1 - 2) / (5 - 2)),  # short hole: the two trailing empty buckets are not counted
    ("avg", 10.0, 0.0),  # a hole of a whole window
    ("record", 6.0, 91.0),
    ("avg", 6.0, (15 - 1 - 2 + 91) / 5),  # a hole inside the window counts as 0
    ("record", 60.0, 1984.0),  # a window without writes restarts the run
    ("avg", 60.0, 1984.0),
    ("record", 57.0, 4.0),  # an earlier write moves firstWrite back
    ("avg", 60.0, (4 + 1984) / 4),
    ("record", 61.0, 5.0),
    ("avg", 61.0, (4 + 1984 + 5) / 5),
    ("record", 58.0, 10.0),
    ("avg", 61.0, (4 + 10 + 1984 + 5) / 5),
    ("record", 55.0, 10.0),  # older than the window: ignored
    ("record", 56.0, 10.0),  # exactly a window old: ignored
    ("avg", 61.0, (4 + 10 + 1984 + 5) / 5),
    ("record", 66.0, 10.0),  # no write for exactly a window: cleared
    ("avg", 66.0, 10.0),
]


def test_window_average_as_knative_buckets() -> None:
    b = _Buckets(1.0, 5.0)
    for i, (op, t, value) in enumerate(WINDOW_STEPS):
        if op == "record":
            b.record(T0 + t, value)
        else:
            assert b.average(T0 + t) == pytest.approx(value), f"step {i}: avg at +{t}"


def _kpa(**params: object) -> KnativePodAutoscaler:
    return KnativePodAutoscaler(KpaParams(**params))  # type: ignore[arg-type]


def test_trailing_empty_buckets_do_not_dilute_the_stable_average() -> None:
    # samples stop at t = 9 (e.g. the scraper lost the pods); at t = 19 the average is over t = 0..9 only
    k = _kpa(container_concurrency=10, target_utilization=1.0, min_replicas=0)
    for t in range(10):
        k.observe(ScalingMetrics(now=float(t), ready_replicas=4, in_flight=40.0))
    d = k.decide(19.0)
    assert d.desired == 4  # 40 / 10; counting 10 empty buckets would give 20 / 10 = 2


# (ready pods in the last sample, ready pods now, desired): avg 10, target 1 per pod -> 10 pods wanted,
# limited to floor(ready / 2) .. ceil(1000 * ready), panic only when 10 / ready >= 2
READY_CASES = [
    (1, None, 10),  # no count passed: the sample's (1 ready): panic, 10
    (1, 8, 10),  # 10 / 8 < 2: stable, 10
    (40, 40, 20),  # scale down at most by half: floor(40 / 2)
    (40, 30, 15),  # the count at decision time bounds it: floor(30 / 2)
]


@pytest.mark.parametrize(("sampled", "now_ready", "desired"), READY_CASES)
def test_ready_pods_counted_at_decision_time(sampled: int, now_ready: int | None, desired: int) -> None:
    k = _kpa(container_concurrency=1, target_utilization=1.0, max_replicas=0)
    k.observe(ScalingMetrics(now=0.0, ready_replicas=sampled, in_flight=10.0))
    assert k.decide(0.0, ready_replicas=now_ready).desired == desired


# (sampled in_flight, time-averaged concurrency, desired): target 10 per pod
CONCURRENCY_CASES = [
    (50.0, None, 5),  # no average from the engine: the sample
    (50.0, 12.0, 2),  # a burst caught by the sample: the average wins
    (0.0, 31.0, 4),
]


@pytest.mark.parametrize(("in_flight", "avg", "desired"), CONCURRENCY_CASES)
def test_concurrency_averaged_over_time(in_flight: float, avg: float | None, desired: int) -> None:
    k = _kpa(container_concurrency=10, target_utilization=1.0, max_replicas=0)
    k.observe(ScalingMetrics(now=0.0, ready_replicas=5, in_flight=in_flight, avg_concurrency=avg))
    assert k.decide(0.0).desired == desired


def test_target_burst_capacity_default_is_211() -> None:
    assert KpaParams().target_burst_capacity == 211.0
    with pytest.raises(ValueError, match="avg_concurrency"):
        ScalingMetrics(now=0.0, ready_replicas=1, avg_concurrency=-1.0)
