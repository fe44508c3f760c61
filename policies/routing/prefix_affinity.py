"""llm-d's prefix-cache affinity gate: narrow the candidates to the endpoints already holding the prompt.

The filter reads prefix scores (matched blocks / blocks of this prompt) from the profile's prefix-cache scorer,
bound by the profile; without one every score is 0 and the filter keeps everything, as llm-d's does when no
prefix-cache scorer produced match info.

llm-d's TTFT load gate (filter/prefixcacheaffinity/plugin.go at 520af478) reads TTFT predictions from its
latency-predictor sidecar; without one every endpoint's best TTFT is MaxFloat64, the gap is 0 and the gate never
breaks. That is odhsim's default too (`ttft_predictor: none`); `ttft_predictor: linear` is odhsim's own stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.types import EndpointState, RouteRequest

TtftPredictor = Callable[[EndpointState, RouteRequest, int], float]
"""Predicted time to first token (s) of `request` on an endpoint, given how many prompt blocks it has cached."""


class LinearTtftPredictor:
    """TTFT ~ (waiting + 1) * queue_s_per_request + uncached prompt tokens * prefill_s_per_token.

    A stand-in for llm-d's trained latency predictor: the queue ahead of the request (each waiting request
    delays it by about one prefill slot) plus its own prefill of the tokens the endpoint has not cached
    (uncached = prompt - matched blocks * block_tokens). Defaults: 0.1 s per queued request and 10k prefill
    tokens/s (an 8B model on one H100 prefills a few times faster; the gate only compares endpoints, so only
    the ratio of the two terms matters much).
    """

    __slots__ = ("prefill_s_per_token", "queue_s_per_request")

    def __init__(self, queue_s_per_request: float = 0.1, prefill_s_per_token: float = 1e-4) -> None:
        self.queue_s_per_request = queue_s_per_request
        self.prefill_s_per_token = prefill_s_per_token

    def __call__(self, endpoint: EndpointState, request: RouteRequest, matched_blocks: int) -> float:
        uncached = max(0, request.prompt_tokens - matched_blocks * request.block_tokens)
        return (endpoint.waiting + 1) * self.queue_s_per_request + uncached * self.prefill_s_per_token


class PrefixCacheAffinityParams(PolicyParams):
    affinity_threshold: Annotated[float, Field(le=1.0)] = 0.80
    exploration_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    max_ttft_penalty_s: Annotated[float, Field(ge=0.0)] = 5.0
    ttft_predictor: Literal["none", "linear"] = "none"
    queue_s_per_request: Annotated[float, Field(ge=0.0)] = 0.1
    prefill_s_per_token: Annotated[float, Field(ge=0.0)] = 1e-4


class PrefixCacheAffinityFilter(Plugin):
    """Keep the "sticky" endpoints, those whose prefix score is >= affinity_threshold (0.80; 0.99 for llm-d's
    strict global gate), in llm-d's order of checks:

    1. one candidate or threshold <= 0: keep all (no random draw);
    2. with probability exploration_probability (1 %): keep all, so other endpoints get to cache the prefix;
    3. no sticky endpoint: keep all;
    4. TTFT load gate (a predictor, max_ttft_penalty_s > 0 and some endpoint is not sticky): if the best sticky
       endpoint's predicted TTFT exceeds the best non-sticky one's by more than max_ttft_penalty_s (5 s), keep all;
    5. otherwise keep only the sticky endpoints.

    `predictor` maps (endpoint, request, matched blocks) to a predicted TTFT; None (the default, as llm-d without
    its latency predictor) never breaks stickiness; `ttft_predictor: linear` uses `LinearTtftPredictor`.
    """

    TYPE = "prefix-cache-affinity-filter"
    Params = PrefixCacheAffinityParams
    __slots__ = ("exploration_probability", "max_ttft_penalty_s", "predictor", "prefix", "rng", "threshold")

    def __init__(
        self,
        rng: np.random.Generator,
        affinity_threshold: float = 0.80,
        exploration_probability: float = 0.01,
        max_ttft_penalty_s: float = 5.0,
        predictor: TtftPredictor | None = None,
    ) -> None:
        super().__init__()
        self.rng = rng
        self.threshold = affinity_threshold
        self.exploration_probability = exploration_probability
        self.max_ttft_penalty_s = max_ttft_penalty_s
        self.predictor: TtftPredictor | None = predictor
        self.prefix: PrefixCacheScorer | None = None

    @classmethod
    def from_params(cls, params: PrefixCacheAffinityParams, rng: np.random.Generator) -> PrefixCacheAffinityFilter:
        predictor = None
        if params.ttft_predictor == "linear":
            predictor = LinearTtftPredictor(params.queue_s_per_request, params.prefill_s_per_token)
        return cls(rng, params.affinity_threshold, params.exploration_probability, params.max_ttft_penalty_s, predictor)

    def bind_prefix(self, prefix: PrefixCacheScorer) -> None:
        """Called by the profile: read prefix scores from this prefix index."""
        self.prefix = prefix

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        if len(endpoints) <= 1 or self.threshold <= 0.0:
            return endpoints
        p = self.exploration_probability
        if p > 0.0 and self.rng.random() < p:
            return endpoints
        sticky, others = self._split(request, endpoints)
        if not sticky:
            return endpoints
        predict = self.predictor
        if predict is not None and self.max_ttft_penalty_s > 0.0 and others:
            best_sticky = min(predict(endpoints[i], request, m) for i, m in sticky)
            best_other = min(predict(endpoints[i], request, m) for i, m in others)
            if best_sticky - best_other > self.max_ttft_penalty_s:
                return endpoints
        return [endpoints[i] for i, _ in sticky]

    def _split(
        self, request: RouteRequest, endpoints: Sequence[EndpointState]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(index, matched blocks) of the sticky endpoints and of the others."""
        prefix = self.prefix
        if prefix is None:
            return [], []
        total = len(prefix.hashes(request))
        if total == 0:
            return [], []
        sticky: list[tuple[int, int]] = []
        others: list[tuple[int, int]] = []
        threshold = self.threshold
        for i, m in enumerate(prefix.match_lengths(request, endpoints)):
            (sticky if m / total >= threshold else others).append((i, m))
        return sticky, others
