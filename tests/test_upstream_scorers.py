"""The router-local scorers (active-request, token-load, session-affinity) case by case from upstream.

Sources, llm-d/llm-d-inference-scheduler (llm-d-router) at 520af478, pkg/epp/framework/plugins/:
- scheduling/scorer/activerequest/active_request.go and active_request_test.go (scores; the deprecated
  requestTimeout is ignored; counts come from the inflight-load producer);
- requestcontrol/dataproducer/inflightload/producer.go (a count is added at PreRequest, released at end of stream)
  and token_estimator.go / token_estimator_test.go (tokens = input + round(1.5 x input), input at least 1);
- scheduling/scorer/tokenload/token_load.go and token_load_test.go (in-flight tokens only; 0 tokens: 1);
- scheduling/scorer/sessionaffinity/session_affinity.go (`x-session-token` set in ResponseBody at EndOfStream).
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.builtin import REGISTRY
from policies.routing.framework import SchedulerProfile
from policies.routing.inflight_scorers import ActiveRequestScorer, TokenLoadScorer, estimate_tokens
from policies.routing.pickers import RoundRobinPicker
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.scorers import SessionAffinityScorer
from policies.routing.types import EndpointState
from tests.test_policies_helpers import eps, req
from tests.test_policies_prefix_routing import cached, kept


def _active(counts: list[int], **params: float) -> ActiveRequestScorer:
    s = ActiveRequestScorer(**params)  # type: ignore[arg-type]
    rid = 0
    for i, c in enumerate(counts):
        for _ in range(c):
            rid += 1
            s.on_dispatch(0.0, req(rid), f"e{i}")
    return s


# active_request_test.go: (in-flight counts, params, expected scores)
ACTIVE_CASES = [
    ([0, 0, 0], {}, [1.0, 1.0, 1.0]),  # "no load attribute set"
    ([3, 0, 6], {}, [0.5, 1.0, 0.0]),  # "all endpoints have different request counts"
    ([4, 0, 1], {}, [0.0, 1.0, 0.75]),  # "some endpoints have load data"
    ([1, 0], {"idle_threshold": 0, "max_busy_score": 0.0}, [0.0, 1.0]),  # binary mode
    ([1, 2, 0], {"idle_threshold": 1, "max_busy_score": 0.5}, [1.0, 0.0, 1.0]),  # hybrid mode
]


@pytest.mark.parametrize(("counts", "params", "expected"), ACTIVE_CASES)
def test_active_request_scores(counts: list[int], params: dict[str, float], expected: list[float]) -> None:
    s = _active(counts, **params)
    assert s.score(0.0, req(), eps(*([0] * len(counts)))) == pytest.approx(expected)


def test_active_request_counts_until_end_of_stream_without_timeout() -> None:
    # TestActiveRequestScorer_UsesInFlightLoadProducerLifecycle, plus: no timeout releases the count
    s = ActiveRequestScorer()
    s.on_dispatch(0.0, req(1), "e0")
    assert s.score(0.0, req(), eps(0, 0)) == [0.0, 1.0]
    assert s.score(3600.0, req(), eps(0, 0)) == [0.0, 1.0]  # the old odhsim dropped it after 120 s
    s.on_complete(3600.0, req(1), "e0", 3600.0, True)
    assert s.score(3600.0, req(), eps(0, 0)) == [1.0, 1.0]


# token_estimator_test.go: (input tokens, estimate); "Hello, world!" is 13 characters -> round(3.25) = 3 tokens.
ESTIMATES = [(1, 3), (3, 8), (0, 3), (2, 5), (1000, 2500), (5, 13)]


@pytest.mark.parametrize(("prompt", "tokens"), ESTIMATES)
def test_token_estimate(prompt: int, tokens: int) -> None:
    assert estimate_tokens(prompt) == tokens


def test_token_load_scores_in_flight_tokens_only() -> None:
    # TestTokenLoadScorer: threshold 1000; in flight 0, 500, 1000 tokens -> 1.0, 0.5, 0.0
    s = TokenLoadScorer(queue_threshold_tokens=1000)
    s.on_dispatch(0.0, req(1, prompt=200), "e1")  # 200 + 300 = 500
    s.on_dispatch(0.0, req(2, prompt=400), "e2")  # 400 + 600 = 1000
    incoming = req(3, prompt=900)  # the request being scored adds nothing
    assert s.score(0.0, incoming, eps(0, 0, 0)) == pytest.approx([1.0, 0.5, 0.0])
    s.on_complete(1.0, req(2, prompt=400), "e2", 1.0, False)
    assert s.score(1.0, incoming, eps(0, 0, 0)) == pytest.approx([1.0, 0.5, 1.0])


def test_session_token_is_bound_at_end_of_stream() -> None:
    s = SessionAffinityScorer()
    router = SchedulerProfile([], [(s, 1.0)], RoundRobinPicker())
    first = req(1, session=5)
    router.on_dispatch(0.0, first, "e1")
    # the client has no token until the first response ends: a second request in flight meanwhile scores 0
    assert s.score(0.5, req(2, session=5), eps(0, 0, 0)) == [0.0, 0.0, 0.0]
    router.on_complete(1.0, first, "e1", 1.0, True)
    assert s.score(1.0, req(3, session=5), eps(0, 0, 0)) == [0.0, 1.0, 0.0]
    s.on_complete(2.0, req(4, session=5), "e2", 1.0, True)  # the latest response's token wins
    assert s.score(2.0, req(5, session=5), eps(0, 0, 0)) == [0.0, 0.0, 1.0]
    assert s.score(2.0, req(6, session=6), eps(0, 0, 0)) == [0.0, 0.0, 0.0]


# filter/prefixcacheaffinity/plugin.go: without a latency predictor bestTTFT is MaxFloat64 on both sides, so the
# gate never breaks; (sticky waiting, other waiting, predictor, endpoints kept)
AFFINITY_CASES = [
    (0, 0, None, ["sticky"]),
    (10_000, 0, None, ["sticky"]),  # however loaded the sticky endpoint is
    (10_000, 0, "linear", ["sticky", "other"]),  # odhsim's own predictor, opt-in
    (0, 0, "linear", ["sticky"]),
]


@pytest.mark.parametrize(("sticky_waiting", "other_waiting", "predictor", "kept_names"), AFFINITY_CASES)
def test_affinity_ttft_gate_needs_a_predictor(
    sticky_waiting: int, other_waiting: int, predictor: str | None, kept_names: list[str]
) -> None:
    params = {"exploration_probability": 0.0} | ({"ttft_predictor": predictor} if predictor else {})
    flt = REGISTRY.build("filter", "prefix-cache-affinity-filter", params, np.random.default_rng(0))
    prefix = PrefixCacheScorer()
    cached(prefix, {"sticky": 10, "other": 0})
    flt.bind_prefix(prefix)  # type: ignore[attr-defined]
    endpoints = [
        EndpointState("sticky", "m", waiting=sticky_waiting),
        EndpointState("other", "m", waiting=other_waiting),
    ]
    assert kept(flt, endpoints) == kept_names  # type: ignore[arg-type]
