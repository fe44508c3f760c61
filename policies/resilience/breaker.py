"""The classic circuit breaker: closed -> open -> half-open -> closed (or open again).

- closed: every request is allowed; `failure_threshold` consecutive failures open the breaker (a success resets
  the count).
- open: nothing is allowed until the cool-down is over; then the breaker is half-open (the transition is stamped
  at the instant the cool-down ended, observed lazily by the next call).
- half-open: `allow` lets `half_open_probes` requests through (each allowed call is one probe) and refuses the
  rest; when that many probe successes have come back the breaker closes (cool-down back to its base), and any
  failure opens it again with the cool-down multiplied by `cooldown_multiplier` (capped at `max_cooldown_s`).

Results recorded while open are ignored (they belong to requests sent before it opened). In half-open a success
counts only against an outstanding probe, so a late success from before the opening cannot close the breaker.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from policies.registry import PolicyParams

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half_open"

LEGAL_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}
)


class CircuitBreakerParams(PolicyParams):
    """`circuit-breaker` / `consecutive-failures`."""

    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_s: Annotated[float, Field(gt=0.0)] = 30.0
    half_open_probes: Annotated[int, Field(ge=1)] = 1
    cooldown_multiplier: Annotated[float, Field(ge=1.0)] = 1.0
    max_cooldown_s: Annotated[float, Field(gt=0.0)] = 300.0

    @model_validator(mode="after")
    def _check(self) -> CircuitBreakerParams:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError("max_cooldown_s must be >= cooldown_s")
        return self


class CircuitBreaker:
    """One breaker (per model, per backend: the caller keeps one per thing it protects)."""

    __slots__ = (
        "_consecutive_failures",
        "_cooldown_s",
        "_opened_at",
        "_probe_successes",
        "_probes_issued",
        "_state",
        "base_cooldown_s",
        "cooldown_multiplier",
        "failure_threshold",
        "half_open_probes",
        "max_cooldown_s",
        "transitions",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        half_open_probes: int = 1,
        cooldown_multiplier: float = 1.0,
        max_cooldown_s: float = 300.0,
    ) -> None:
        p = CircuitBreakerParams(
            failure_threshold=failure_threshold,
            cooldown_s=cooldown_s,
            half_open_probes=half_open_probes,
            cooldown_multiplier=cooldown_multiplier,
            max_cooldown_s=max_cooldown_s,
        )
        self.failure_threshold = p.failure_threshold
        self.base_cooldown_s = p.cooldown_s
        self.half_open_probes = p.half_open_probes
        self.cooldown_multiplier = p.cooldown_multiplier
        self.max_cooldown_s = p.max_cooldown_s
        self._state: BreakerState = CLOSED
        self._consecutive_failures = 0
        self._cooldown_s = p.cooldown_s
        self._opened_at = 0.0
        self._probes_issued = 0
        self._probe_successes = 0
        self.transitions: list[tuple[float, str, str]] = []  # (time, from, to), for the events table

    @classmethod
    def from_params(cls, params: CircuitBreakerParams, rng: np.random.Generator) -> CircuitBreaker:
        return cls(
            params.failure_threshold,
            params.cooldown_s,
            params.half_open_probes,
            params.cooldown_multiplier,
            params.max_cooldown_s,
        )

    # -- state -------------------------------------------------------------------------------------------------
    def _move(self, at: float, to: BreakerState) -> None:
        self.transitions.append((at, self._state, to))
        self._state = to

    def _advance(self, now: float) -> None:
        if self._state == OPEN and now >= self._opened_at + self._cooldown_s:
            self._move(self._opened_at + self._cooldown_s, HALF_OPEN)
            self._probes_issued = 0
            self._probe_successes = 0

    def _open(self, now: float) -> None:
        self._move(now, OPEN)
        self._opened_at = now
        self._consecutive_failures = 0

    def state(self, now: float) -> BreakerState:
        self._advance(now)
        return self._state

    @property
    def cooldown_s(self) -> float:
        """The cool-down the breaker uses the next time it is (or now that it is) open."""
        return self._cooldown_s

    def reopens_at(self, now: float) -> float | None:
        """When an open breaker turns half-open (None unless open)."""
        self._advance(now)
        return self._opened_at + self._cooldown_s if self._state == OPEN else None

    @property
    def probes_in_flight(self) -> int:
        """Half-open probes allowed whose result has not come back yet."""
        return self._probes_issued - self._probe_successes if self._state == HALF_OPEN else 0

    # -- decisions ---------------------------------------------------------------------------------------------
    def allow(self, now: float) -> bool:
        """May a request go through now? In half-open an allowed request is counted as a probe."""
        self._advance(now)
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            return False
        if self._probes_issued < self.half_open_probes:
            self._probes_issued += 1
            return True
        return False

    def record(self, now: float, ok: bool) -> None:
        """The result of a request that was allowed."""
        self._advance(now)
        if self._state == CLOSED:
            if ok:
                self._consecutive_failures = 0
                return
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.failure_threshold:
                self._open(now)
            return
        if self._state == OPEN:
            return
        if not ok:
            self._cooldown_s = min(self._cooldown_s * self.cooldown_multiplier, self.max_cooldown_s)
            self._open(now)
            return
        if self._probe_successes < self._probes_issued:
            self._probe_successes += 1
            if self._probe_successes >= self.half_open_probes:
                self._move(now, CLOSED)
                self._consecutive_failures = 0
                self._cooldown_s = self.base_cooldown_s
