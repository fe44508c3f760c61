"""Retries: Envoy's retry budget and jittered back-off, the seed's failure ladder, and the two `retry` policies.

Envoy facts used (envoyproxy/envoy):
- Retry budget (api/envoy/config/cluster/v3/circuit_breaker.proto, source/common/upstream/resource_manager_impl.h):
  concurrent retries allowed = max(floor(budget_percent / 100 * (active + pending requests)),
  min_retry_concurrency), defaults 20% and 3; a retry may start while retries in flight < that. A configured
  budget replaces the `max_retries` circuit breaker (3 concurrent retries).
- Back-off (route retry_policy, source/common/common/backoff_strategy.cc, JitteredExponentialBackOffStrategy):
  base 25 ms, max 10 x base; retry n waits uniform[0, interval_n) ("full jitter") where interval_1 = base and
  interval_{n+1} = 2 * interval_n while interval_n < max / 2, else max. With the defaults: 25, 50, 100, 200, 250,
  250 ... ms. (Envoy draws whole milliseconds; this draws a continuous uniform.)
- Route retry policy: num_retries defaults to 1.

The seed's ladder (project design): retry the same model once on the first failure, try the backup model after
2-3 failures, give up after 5 (and the caller opens that model's breaker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from policies.registry import PolicyParams

RetryAction = Literal["retry", "fallback", "fail"]

# What each Envoy `retry_on` condition covers among the failure kinds an engine reports. "5xx" includes resets,
# connect failures and per-try timeouts (Envoy: "or does not respond at all"); gateway-error is 502/503/504.
FAILURE_KINDS = ("5xx", "gateway-error", "reset", "connect-failure", "timeout", "refused-stream", "4xx")
RETRY_ON_COVERS: dict[str, frozenset[str]] = {
    "5xx": frozenset({"5xx", "gateway-error", "reset", "connect-failure", "timeout", "refused-stream"}),
    "gateway-error": frozenset({"gateway-error", "timeout"}),
    "reset": frozenset({"reset"}),
    "connect-failure": frozenset({"connect-failure"}),
    "timeout": frozenset({"timeout"}),
    "refused-stream": frozenset({"refused-stream"}),
    "retriable-4xx": frozenset({"4xx"}),
}


class RetryBudget:
    """Envoy's cluster retry budget: how many retries may be in flight at once."""

    __slots__ = ("budget_percent", "min_retry_concurrency")

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        if not 0.0 <= budget_percent <= 100.0:
            raise ValueError("budget_percent must be within [0, 100]")
        if min_retry_concurrency < 0:
            raise ValueError("min_retry_concurrency must be >= 0")
        self.budget_percent = float(budget_percent)
        self.min_retry_concurrency = int(min_retry_concurrency)

    def max_retries_in_flight(self, active: int, pending: int) -> int:
        """max(floor(budget_percent% of (active + pending)), min_retry_concurrency)."""
        if active < 0 or pending < 0:
            raise ValueError("active and pending must be >= 0")
        return max(int(self.budget_percent / 100.0 * (active + pending)), self.min_retry_concurrency)

    def can_retry(self, active: int, pending: int, retries_in_flight: int) -> bool:
        return retries_in_flight < self.max_retries_in_flight(active, pending)


class RetryPolicy:
    """Envoy's route retry policy: how many retries, on which failures, and the jittered back-off."""

    __slots__ = ("_rng", "base_interval_s", "max_interval_s", "max_retries", "retry_on")

    def __init__(
        self,
        max_retries: int = 1,
        retry_on: tuple[str, ...] = ("5xx", "reset", "timeout"),
        base_interval_s: float = 0.025,
        max_interval_s: float | None = None,
        *,
        rng: np.random.Generator,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        unknown = [c for c in retry_on if c not in RETRY_ON_COVERS]
        if unknown:
            raise ValueError(f"unknown retry_on condition(s) {unknown}; known: {sorted(RETRY_ON_COVERS)}")
        if not base_interval_s > 0:
            raise ValueError("base_interval_s must be > 0")
        max_s = 10.0 * base_interval_s if max_interval_s is None else max_interval_s
        if max_s < base_interval_s:
            raise ValueError("max_interval_s must be >= base_interval_s")
        self._rng = rng
        self.max_retries = int(max_retries)
        self.retry_on = tuple(retry_on)
        self.base_interval_s = float(base_interval_s)
        self.max_interval_s = float(max_s)

    def is_retryable(self, failure: str) -> bool:
        """Does some `retry_on` condition cover this failure kind (see FAILURE_KINDS)?"""
        if failure not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind '{failure}'; known: {', '.join(FAILURE_KINDS)}")
        return any(failure in RETRY_ON_COVERS[c] for c in self.retry_on)

    def interval_s(self, attempt: int) -> float:
        """The upper end of retry `attempt`'s back-off (attempt 1 is the first retry)."""
        if attempt < 1:
            raise ValueError("attempt counts retries from 1")
        interval = self.base_interval_s
        for _ in range(attempt - 1):
            interval = interval * 2.0 if interval < self.max_interval_s / 2.0 else self.max_interval_s
            if interval == self.max_interval_s:
                break
        return interval

    def next_backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, interval_s(attempt)), from the injected generator."""
        return float(self._rng.random()) * self.interval_s(attempt)


@dataclass(frozen=True, slots=True)
class LadderDecision:
    action: RetryAction
    reason: str


class FailureLadder:
    """The seed's escalation after `failures_so_far` failed attempts of one request.

    failures >= open_breaker_after          -> fail (the caller opens the model's breaker)
    retry budget exhausted                  -> fail, "retry budget exhausted"
    failures >= fallback_after, has backup  -> fallback to the backup model
    failures >= retry_same_after            -> retry the same model (also past fallback_after when there is no
                                               backup: the attempts up to the breaker threshold stay on it)
    otherwise                               -> fail (retries switched off by retry_same_after)
    """

    __slots__ = ("fallback_after", "open_breaker_after", "retry_same_after")

    def __init__(self, retry_same_after: int = 1, fallback_after: int = 2, open_breaker_after: int = 5) -> None:
        if not 1 <= retry_same_after <= fallback_after <= open_breaker_after:
            raise ValueError("need 1 <= retry_same_after <= fallback_after <= open_breaker_after")
        self.retry_same_after = int(retry_same_after)
        self.fallback_after = int(fallback_after)
        self.open_breaker_after = int(open_breaker_after)

    def decide(self, failures_so_far: int, has_fallback: bool, budget_ok: bool) -> LadderDecision:
        if failures_so_far < 1:
            raise ValueError("the ladder is consulted after a failure: failures_so_far >= 1")
        if failures_so_far >= self.open_breaker_after:
            return LadderDecision("fail", f"{failures_so_far} failures: give up and open the breaker")
        if not budget_ok:
            return LadderDecision("fail", "retry budget exhausted")
        if failures_so_far >= self.fallback_after and has_fallback:
            return LadderDecision("fallback", f"{failures_so_far} failures: try the backup model")
        if failures_so_far >= self.retry_same_after:
            if failures_so_far >= self.fallback_after:
                return LadderDecision("retry", f"{failures_so_far} failures, no backup model: retry the same model")
            return LadderDecision("retry", f"{failures_so_far} failure(s): retry the same model")
        return LadderDecision("fail", f"{failures_so_far} failure(s): below retry_same_after")


# -- the `retry` policies: one decision interface for the engines ----------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt: retry (same model), fallback (backup model) or fail; wait backoff_s."""

    action: RetryAction
    reason: str
    backoff_s: float = 0.0


class _RetryBase(PolicyParams):
    retry_on: tuple[str, ...] = ("5xx", "reset", "timeout")
    base_interval_s: Annotated[float, Field(gt=0.0)] = 0.025
    max_interval_s: Annotated[float | None, Field(gt=0.0)] = None  # None: 10 x base_interval_s
    budget_percent: Annotated[float, Field(ge=0.0, le=100.0)] = 20.0
    min_retry_concurrency: Annotated[int, Field(ge=0)] = 3

    @field_validator("retry_on")
    @classmethod
    def _known_conditions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in RETRY_ON_COVERS]
        if unknown:
            raise ValueError(f"unknown retry_on condition(s) {unknown}; known: {sorted(RETRY_ON_COVERS)}")
        return v

    @model_validator(mode="after")
    def _intervals(self) -> _RetryBase:
        if self.max_interval_s is not None and self.max_interval_s < self.base_interval_s:
            raise ValueError("max_interval_s must be >= base_interval_s")
        return self


class EnvoyRetryParams(_RetryBase):
    """`retry` / `envoy-budget`: num_retries (default 1) on the retry_on failures, within the retry budget."""

    max_retries: Annotated[int, Field(ge=0)] = 1


class LadderRetryParams(_RetryBase):
    """`retry` / `ladder`: the seed's ladder, with Envoy's retry_on filter, budget and back-off."""

    retry_same_after: Annotated[int, Field(ge=1)] = 1
    fallback_after: Annotated[int, Field(ge=1)] = 2
    open_breaker_after: Annotated[int, Field(ge=1)] = 5

    @model_validator(mode="after")
    def _order(self) -> LadderRetryParams:
        if not self.retry_same_after <= self.fallback_after <= self.open_breaker_after:
            raise ValueError("need retry_same_after <= fallback_after <= open_breaker_after")
        return self


def _budget_ok(budget: RetryBudget, active: int, pending: int, retries_in_flight: int) -> bool:
    return budget.can_retry(active, pending, retries_in_flight)


class EnvoyRetry:
    """Envoy's behaviour: retry the same upstream up to `max_retries` times, never fall back."""

    __slots__ = ("budget", "policy")

    def __init__(self, policy: RetryPolicy, budget: RetryBudget) -> None:
        self.policy = policy
        self.budget = budget

    @classmethod
    def from_params(cls, params: EnvoyRetryParams, rng: np.random.Generator) -> EnvoyRetry:
        policy = RetryPolicy(
            params.max_retries, params.retry_on, params.base_interval_s, params.max_interval_s, rng=rng
        )
        return cls(policy, RetryBudget(params.budget_percent, params.min_retry_concurrency))

    def decide(
        self,
        failures_so_far: int,
        failure: str,
        has_fallback: bool,
        active: int,
        pending: int,
        retries_in_flight: int,
    ) -> RetryDecision:
        """After the `failures_so_far`-th failed attempt (of kind `failure`) of one request."""
        if failures_so_far < 1:
            raise ValueError("failures_so_far >= 1")
        if not self.policy.is_retryable(failure):
            return RetryDecision("fail", f"'{failure}' is not in retry_on")
        if failures_so_far > self.policy.max_retries:
            return RetryDecision("fail", f"retries exhausted (max_retries={self.policy.max_retries})")
        if not _budget_ok(self.budget, active, pending, retries_in_flight):
            return RetryDecision("fail", "retry budget exhausted")
        return RetryDecision("retry", "retry_on matched", self.policy.next_backoff_s(failures_so_far))


class LadderRetry:
    """The seed's ladder with Envoy's retry_on filter, budget and back-off (a fallback is sent without waiting)."""

    __slots__ = ("budget", "ladder", "policy")

    def __init__(self, ladder: FailureLadder, policy: RetryPolicy, budget: RetryBudget) -> None:
        self.ladder = ladder
        self.policy = policy
        self.budget = budget

    @classmethod
    def from_params(cls, params: LadderRetryParams, rng: np.random.Generator) -> LadderRetry:
        ladder = FailureLadder(params.retry_same_after, params.fallback_after, params.open_breaker_after)
        max_retries = params.open_breaker_after - 1
        policy = RetryPolicy(max_retries, params.retry_on, params.base_interval_s, params.max_interval_s, rng=rng)
        return cls(ladder, policy, RetryBudget(params.budget_percent, params.min_retry_concurrency))

    @property
    def open_breaker_after(self) -> int:
        return self.ladder.open_breaker_after

    def decide(
        self,
        failures_so_far: int,
        failure: str,
        has_fallback: bool,
        active: int,
        pending: int,
        retries_in_flight: int,
    ) -> RetryDecision:
        if failures_so_far < 1:
            raise ValueError("failures_so_far >= 1")
        if not self.policy.is_retryable(failure):
            return RetryDecision("fail", f"'{failure}' is not in retry_on")
        step = self.ladder.decide(
            failures_so_far, has_fallback, _budget_ok(self.budget, active, pending, retries_in_flight)
        )
        backoff = self.policy.next_backoff_s(failures_so_far) if step.action == "retry" else 0.0
        return RetryDecision(step.action, step.reason, backoff)
