"""The simulator feeds KPA concurrency averaged over time (Knative's queue-proxy reports AverageConcurrentRequests),
not the in-flight count sampled at its tick: the averages it sees add up to the requests' own time in the system."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from policies.autoscaling.kpa import KnativePodAutoscaler
from policies.autoscaling.types import ScalingMetrics


def _scenario() -> dict[str, Any]:
    return {
        "name": "kpa-avg",
        "seed": 3,
        "duration_s": 300,
        "gpu_pool": [{"gpu": "T4", "count": 4}],
        "models": [
            {
                "name": "clf",
                "kind": "fixed",
                "gpu": "T4",
                "replicas": 1,
                "concurrency": 4,
                "service_time": {"dist": "exponential", "mean_s": 0.7},
                "autoscaling": {"type": "kpa", "params": {"min_replicas": 1, "max_replicas": 4, "target": 2}},
            }
        ],
        "workload": {
            "sources": [
                {
                    "kind": "poisson",
                    "rate": 5.0,
                    "duration_s": 300,
                    "prompt_tokens": {"dist": "fixed", "value": 1},
                    "output_tokens": {"dist": "fixed", "value": 1},
                }
            ]
        },
        "outputs": {"timeseries_bucket_s": 60},
    }


def test_kpa_sees_the_in_flight_integral_over_each_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ScalingMetrics] = []
    observe = KnativePodAutoscaler.observe

    def spy(self: KnativePodAutoscaler, m: ScalingMetrics) -> None:
        seen.append(m)
        observe(self, m)

    monkeypatch.setattr(KnativePodAutoscaler, "observe", spy)
    res = simulate(scenario_from_dict(_scenario()))
    assert res.summary["completed"] == res.summary["requests"] > 1000
    assert len(seen) > 100 and all(m.avg_concurrency is not None for m in seen)

    # Sum of avg x tick length over (first tick, last tick] = request-seconds the requests spent in that window.
    t0, t1 = seen[0].now, seen[-1].now
    area_seen = sum(b.avg_concurrency * (b.now - a.now) for a, b in itertools.pairwise(seen))  # type: ignore[operator]
    r = res.requests
    start = np.maximum(r["arrival_s"].to_numpy(), t0)
    end = np.minimum(r["finish_s"].to_numpy(), t1)
    area_requests = float(np.clip(end - start, 0.0, None).sum())
    assert area_requests > 100.0
    assert area_seen == pytest.approx(area_requests, rel=1e-9)

    # A time average differs from the point samples the autoscaler saw before (in flight at the tick).
    diffs = [abs(m.avg_concurrency - m.in_flight) for m in seen[1:]]  # type: ignore[operator]
    assert max(diffs) > 0.5
