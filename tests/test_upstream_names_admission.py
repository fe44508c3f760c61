"""Plugin names, the load-aware threshold fallback and the probabilistic admitter, case by case from upstream.

Sources, llm-d/llm-d-inference-scheduler (llm-d-router) at 520af478, pkg/epp/framework/plugins/:
- scheduling/scorer/runningrequests/runningrequest.go: type "running-requests-size-scorer";
- scheduling/scorer/loadaware/load_aware.go `NewLoadAware`: queueThreshold <= 0 falls back to 128;
- requestcontrol/admitter/probabilisticadmitter/plugin.go `AdmitRequest` / `computeSaturation`: priority >= 0
  admitted; no pods admitted; sat = mean of max(waiting / 5, kv / 0.8) with no staleness check; reject with
  probability min(sat^5 * 300, 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.builtin import REGISTRY
from policies.flowcontrol.admission import ProbabilisticAdmitter
from policies.routing.scorers import LoadAwareScorer, RunningRequestsScorer
from policies.routing.types import EndpointState
from tests.test_policies_helpers import eps, req


@pytest.mark.parametrize("name", ["running-requests-size-scorer", "running-requests-scorer"])
def test_running_requests_scorer_name_and_alias(name: str) -> None:
    s = REGISTRY.build("scorer", name, {}, np.random.default_rng(0))
    assert isinstance(s, RunningRequestsScorer) and s.TYPE == "running-requests-size-scorer"


# (threshold given, waiting, score): NewLoadAware replaces a threshold <= 0 by 128
LOAD_AWARE_CASES = [(0, 64, 0.25), (-5, 64, 0.25), (128, 64, 0.25), (10, 5, 0.25), (0, 0, 0.5)]


@pytest.mark.parametrize(("threshold", "waiting", "score"), LOAD_AWARE_CASES)
def test_load_aware_threshold_falls_back_to_128(threshold: int, waiting: int, score: float) -> None:
    s = REGISTRY.build("scorer", "load-aware-scorer", {"threshold": threshold}, np.random.default_rng(0))
    assert isinstance(s, LoadAwareScorer)
    assert s.score(0.0, req(), eps(waiting)) == pytest.approx([score])


class _Fixed:
    """A generator whose next uniform draw is given (plugin_test.go uses WithRandFn the same way)."""

    def __init__(self, u: float) -> None:
        self.u = u
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.u


def _pods(*metrics: tuple[int, float], scraped_at: float = 0.0) -> list[EndpointState]:
    return [
        EndpointState(f"p{i}", "m", waiting=w, kv_usage=kv, scraped_at=scraped_at) for i, (w, kv) in enumerate(metrics)
    ]


# (priority, pods as (waiting, kv), uniform draw, admitted, draws): shed when draw < min(sat^5 * 300, 1)
ADMIT_CASES = [
    (0, [(100, 1.0)], 0.0, True, 0),  # protected: always admitted, no draw
    (-1, [], 0.0, True, 0),  # no pods: admitted without a draw (the old odhsim saw saturation 1.0)
    (-1, [(5, 0.0)], 0.999, False, 1),  # sat 1: probability 1
    (-1, [(1, 0.0)], 0.095, False, 1),  # sat 0.2: 0.2^5 * 300 = 0.096 > 0.095
    (-1, [(1, 0.0)], 0.097, True, 1),
    (-1, [(0, 0.4), (0, 0.0)], 0.29, False, 1),  # sat (0.5 + 0) / 2 = 0.25: 0.25^5 * 300 = 0.293
    (-1, [(0, 0.0), (0, 0.0)], 0.0, True, 1),  # sat 0: probability 0
]


@pytest.mark.parametrize(("priority", "pods", "u", "admitted", "draws"), ADMIT_CASES)
def test_probabilistic_admitter(
    priority: int, pods: list[tuple[int, float]], u: float, admitted: bool, draws: int
) -> None:
    rng = _Fixed(u)
    a = ProbabilisticAdmitter(rng)  # type: ignore[arg-type]
    got = a.admit(10.0, priority, 1.0, _pods(*pods))  # the engine's detector value (1.0) is not used
    assert (got.admitted, rng.draws) == (admitted, draws)


def test_probabilistic_admitter_has_no_staleness_check() -> None:
    a = ProbabilisticAdmitter(_Fixed(0.5))  # type: ignore[arg-type]
    stale = _pods((0, 0.0), (0, 0.0), scraped_at=-1e6)  # metrics a million seconds old still count as read
    assert a.admit(0.0, -1, 1.0, stale).admitted
    assert a.pool_saturation(_pods((10, 0.0), (0, 0.4))) == pytest.approx((2.0 + 0.5) / 2)
