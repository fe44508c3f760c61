"""A request's time to first token on an endpoint, estimated from the endpoint's scraped state and a latency model,
and the picker that takes the endpoint with the lowest estimate.

The estimate is what odhsim's counterfactual regret scores every routing decision with (odhsim.explain.regret):
regret = estimate(picked) - min over the candidates. `LatencyEstimatePicker` picks by the same function with the
same numbers, so its regret is zero by construction: the yardstick the other policies are measured against. It
knows what the router knows (scraped waiting and running counts, KV usage, the prefix blocks its index credits),
not the replicas' true state, so a zero regret means "best by this estimate", not "best in hindsight of the
whole run".

Estimate (seconds), the terms of odhsim's LatencyModel with coefficients given as numbers:

    current step    the running batch's decode step in progress: decode_step(running, running x context)
    work ahead      waiting x prefill(typical prompt): every waiting request's prompt is computed first (FCFS)
    own prefill     prefill(prompt - cached tokens), cached = prefix blocks x block tokens (capped at prompt - 1)
    KV wait         when kv_usage >= kv_full, the request waits for a running one to finish:
                    typical_output / 2 decode steps at the batch (a choice: half a typical request's decode)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.types import EndpointState, RouteRequest

NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class EstimateCoefficients:
    """A latency model's coefficients (seconds; the CPU terms folded into the bases and per-sequence term) and
    the typical request sizes the estimate charges for requests it cannot see (waiting and running ones)."""

    prefill_base_s: float
    prefill_per_token_s: float
    prefill_per_token_sq_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    prefill_knee_tokens: int = 0
    prefill_per_token_above_knee_s: float = 0.0
    typical_prompt_tokens: float = 1000.0
    typical_context_tokens: float = 1000.0
    typical_output_tokens: float = 200.0
    kv_full: float = 0.95


def prefill_s(c: EstimateCoefficients, tokens: float) -> float:
    """One prefill iteration over `tokens` prompt tokens of one sequence (LatencyModel.prefill_s)."""
    if tokens <= 0:
        return 0.0
    above = max(0.0, tokens - c.prefill_knee_tokens) * c.prefill_per_token_above_knee_s
    return c.prefill_base_s + c.prefill_per_token_s * tokens + c.prefill_per_token_sq_s * tokens * tokens + above


def decode_step_s(c: EstimateCoefficients, batch: float, context_tokens: float) -> float:
    """One decode step of `batch` sequences holding `context_tokens` in all (LatencyModel.decode_step_s)."""
    if batch <= 0:
        return 0.0
    return c.decode_base_s + c.decode_per_seq_s * batch + c.decode_per_context_token_s * context_tokens


def estimate_ttft_s(
    c: EstimateCoefficients,
    prompt_tokens: int,
    cached_tokens: int,
    waiting: int,
    running: int,
    kv_usage: float,
) -> float:
    """The request's estimated time to first token on an endpoint in this state (module docstring)."""
    cached = min(max(cached_tokens, 0), max(prompt_tokens - 1, 0))  # vLLM always computes the last prompt token
    step = decode_step_s(c, running, running * c.typical_context_tokens)
    ahead = waiting * prefill_s(c, c.typical_prompt_tokens)
    own = prefill_s(c, prompt_tokens - cached)
    kv_wait = 0.0
    if kv_usage >= c.kv_full and running > 0:
        kv_wait = c.typical_output_tokens / 2.0 * step
    return step + ahead + own + kv_wait


def _prefill_array(c: EstimateCoefficients, tokens: np.ndarray) -> np.ndarray:
    t = tokens.astype(np.float64)
    above = np.maximum(0.0, t - c.prefill_knee_tokens) * c.prefill_per_token_above_knee_s
    value = c.prefill_base_s + c.prefill_per_token_s * t + c.prefill_per_token_sq_s * t * t + above
    return np.where(tokens > 0, value, 0.0)


def estimate_ttft_array(
    c: EstimateCoefficients,
    prompt_tokens: np.ndarray,
    cached_tokens: np.ndarray,
    waiting: np.ndarray,
    running: np.ndarray,
    kv_usage: np.ndarray,
) -> np.ndarray:
    """`estimate_ttft_s` over arrays of candidates: the same operations in the same order, so each element equals
    the scalar function's value bit for bit (odhsim's regret scores whole runs with it)."""
    prompt = np.asarray(prompt_tokens, dtype=np.int64)
    cached = np.minimum(np.maximum(np.asarray(cached_tokens, dtype=np.int64), 0), np.maximum(prompt - 1, 0))
    run = np.asarray(running, dtype=np.int64)
    batch = run.astype(np.float64)
    step = (
        c.decode_base_s + c.decode_per_seq_s * batch + c.decode_per_context_token_s * (batch * c.typical_context_tokens)
    )
    step = np.where(run > 0, step, 0.0)
    ahead = np.asarray(waiting, dtype=np.int64) * prefill_s(c, c.typical_prompt_tokens)
    own = _prefill_array(c, prompt - cached)
    kv_wait = np.where((np.asarray(kv_usage, dtype=np.float64) >= c.kv_full) & (run > 0),
                       c.typical_output_tokens / 2.0 * step, 0.0)  # fmt: skip
    return step + ahead + own + kv_wait


class LatencyEstimateParams(PolicyParams):
    """The latency model's coefficients (seconds) and typical sizes, as numbers (odhsim fills them from a
    model's profile: `odhsim.explain.regret.estimate_params`)."""

    prefill_base_s: NonNegative
    prefill_per_token_s: NonNegative
    prefill_per_token_sq_s: NonNegative = 0.0
    decode_base_s: NonNegative
    decode_per_seq_s: NonNegative
    decode_per_context_token_s: NonNegative = 0.0
    prefill_knee_tokens: Annotated[int, Field(ge=0)] = 0
    prefill_per_token_above_knee_s: NonNegative = 0.0
    typical_prompt_tokens: NonNegative = 1000.0
    typical_context_tokens: NonNegative = 1000.0
    typical_output_tokens: NonNegative = 200.0
    kv_full: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95

    def coefficients(self) -> EstimateCoefficients:
        return EstimateCoefficients(**self.model_dump())


class LatencyEstimatePicker(Plugin):
    """The candidate with the lowest `estimate_ttft_s` (first on ties); cached tokens from the profile's prefix
    index when it has one (the same matched blocks the decision records carry), else none."""

    TYPE = "latency-estimate-picker"
    Params = LatencyEstimateParams
    __slots__ = ("coefficients", "prefix")

    def __init__(self, coefficients: EstimateCoefficients) -> None:
        super().__init__()
        self.coefficients = coefficients
        self.prefix: object | None = None

    @classmethod
    def from_params(cls, params: LatencyEstimateParams, rng: np.random.Generator) -> LatencyEstimatePicker:
        return cls(params.coefficients())

    def bind_prefix(self, prefix: object) -> None:
        """SchedulerProfile hands over the profile's prefix index (a plugin with `matched_blocks`)."""
        self.prefix = prefix

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int:
        c = self.coefficients
        best, best_s = 0, float("inf")
        for i, e in enumerate(endpoints):
            blocks = int(self.prefix.matched_blocks(request, e.name)) if self.prefix is not None else 0  # type: ignore[attr-defined]
            est = estimate_ttft_s(c, request.prompt_tokens, blocks * request.block_tokens, e.waiting, e.running,
                                  e.kv_usage)  # fmt: skip
            if est < best_s:
                best, best_s = i, est
        return best
