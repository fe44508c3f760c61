"""Stateful property test of the circuit breaker: random allow/record/time-advance sequences keep its invariants.

The machine keeps its own model of when the breaker opened and for how long (base cool-down, multiplied on each
re-opening from half-open, capped, reset on closing) and checks:
- the breaker never allows while open before the modelled cool-down is over, and always allows when closed;
- in half-open at most `half_open_probes` requests are let through per half-open episode;
- the state only changes along closed->open, open->half_open, half_open->closed, half_open->open, with
  non-decreasing timestamps and each transition starting where the previous ended;
- `failure_threshold` consecutive failures while closed open it; a failure in half-open re-opens it.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.resilience.breaker import LEGAL_TRANSITIONS, CircuitBreaker


class BreakerMachine(RuleBasedStateMachine):
    breaker: CircuitBreaker | None = None

    @initialize(
        threshold=st.integers(1, 6),
        cooldown=st.floats(0.5, 50.0),
        probes=st.integers(1, 4),
        multiplier=st.sampled_from([1.0, 1.5, 2.0]),
    )
    def setup(self, threshold: int, cooldown: float, probes: int, multiplier: float) -> None:
        self.breaker = CircuitBreaker(threshold, cooldown, probes, multiplier, max_cooldown_s=4 * cooldown)
        self.now = 0.0
        self.outstanding = 0  # requests allowed whose result is not recorded yet
        self.model_cooldown = cooldown
        self.opened_at: float | None = None
        self.closed_failures = 0
        self.episode = -1  # index of the transition that started the current half-open episode
        self.probes_in_episode = 0

    @rule(dt=st.floats(0.0, 30.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        b = self.breaker
        assert b is not None
        state = b.state(self.now)
        ok = b.allow(self.now)
        if state == "closed":
            assert ok, "closed must allow"
        elif state == "open":
            assert not ok
            assert self.opened_at is not None and self.now < self.opened_at + self.model_cooldown
        else:
            episode = len(b.transitions) - 1
            if episode != self.episode:
                self.episode, self.probes_in_episode = episode, 0
            self.probes_in_episode += int(ok)
            assert self.probes_in_episode <= b.half_open_probes
        self.outstanding += int(ok)

    @precondition(lambda self: self.outstanding > 0)
    @rule(ok=st.booleans())
    def record(self, ok: bool) -> None:
        b = self.breaker
        assert b is not None
        before = b.state(self.now)
        if before == "open":
            assert self.opened_at is not None and self.now < self.opened_at + self.model_cooldown
        self.outstanding -= 1
        b.record(self.now, ok)
        after = b.state(self.now)
        if before == "closed":
            self.closed_failures = 0 if ok else self.closed_failures + 1
            if self.closed_failures >= b.failure_threshold:
                assert after == "open"
                self.closed_failures = 0
                self.opened_at = self.now
            else:
                assert after == "closed"
        elif before == "open":
            assert after == "open"
        elif not ok:
            assert after == "open"
            self.model_cooldown = min(self.model_cooldown * b.cooldown_multiplier, b.max_cooldown_s)
            self.opened_at = self.now
        elif after == "closed":
            self.model_cooldown = b.base_cooldown_s
            self.closed_failures = 0

    @invariant()
    def transitions_are_legal_and_ordered(self) -> None:
        if self.breaker is None:
            return
        state, last = "closed", 0.0
        for at, src, dst in self.breaker.transitions:
            assert (src, dst) in LEGAL_TRANSITIONS
            assert src == state and at >= last
            state, last = dst, at
        assert state == self.breaker.state(last)

    @invariant()
    def model_agrees_on_cooldown(self) -> None:
        if self.breaker is not None:
            assert self.breaker.cooldown_s == self.model_cooldown
            assert 0 <= self.breaker.probes_in_flight <= self.breaker.half_open_probes


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestBreakerStateful = BreakerMachine.TestCase
