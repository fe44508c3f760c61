"""The replica state machine (one `Lifecycle` per replica) and the CrashLoopBackOff restart delay.

States and the legal moves, written once in `LEGAL_TRANSITIONS`:

    pending     -> downloading | loading | gone
    downloading -> loading | failed | gone
    loading     -> testing | failed | gone
    testing     -> ready | failed | gone
    ready       -> draining | failed
    draining    -> gone
    failed      -> restarting | gone
    restarting  -> pending | downloading | loading | gone
    gone        (terminal)

Notes on the choices:
- pending -> loading is the warm start: the weights are already in the node cache, so there is no download.
  restarting -> loading is the same for a restart in place (the weights are still on the node);
  restarting -> downloading re-fetches them (a cache miss / an emptied emptyDir); restarting -> pending is a pod
  that must be scheduled again (evicted, or its node is gone).
- -> gone is allowed from every state that serves nothing (a scale-down or a deletion cancels a replica that is
  still starting, or one that failed / waits in back-off), but NOT from `ready`: a serving replica is always
  drained first (ready -> draining -> gone), so in-flight requests finish. A crash while draining is recorded as
  draining -> gone (the replica was on its way out; the caller fails its in-flight requests), never as `failed`,
  which would make a restart of a replica being removed possible.
- `failed` is reachable only from the states where the engine process runs or its weights are fetched
  (downloading, loading, testing, ready); pending has no container yet.

GPU holding (`holds_gpus`): in KServe the predictor pod is bound to a node and its GPUs are allocated by the
device plugin before any container starts; the storage-initializer is an init container of that same pod. So the
GPUs are held from `downloading` on, through loading, testing, ready and draining, and also in `failed` and
`restarting` (a CrashLoopBackOff pod stays bound to its node and keeps its GPU allocation while the kubelet waits
to restart the container in place). Only `pending` (not scheduled: that is why it is pending) and `gone` hold
none. A restart that needs a new node goes restarting -> pending, which releases them.

Serving (`serves`): only `ready` receives new requests (`draining` finishes in-flight ones but gets no new ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, Literal

import numpy as np
from pydantic import Field, model_validator

from policies.registry import PolicyParams

ReplicaState = Literal[
    "pending", "downloading", "loading", "testing", "ready", "draining", "gone", "failed", "restarting"
]
PENDING: Final = "pending"
DOWNLOADING: Final = "downloading"
LOADING: Final = "loading"
TESTING: Final = "testing"
READY: Final = "ready"
DRAINING: Final = "draining"
GONE: Final = "gone"
FAILED: Final = "failed"
RESTARTING: Final = "restarting"

STATES: tuple[str, ...] = (PENDING, DOWNLOADING, LOADING, TESTING, READY, DRAINING, GONE, FAILED, RESTARTING)

# The one table of legal moves (see the module docstring for why each is there).
NEXT_STATES: dict[str, frozenset[str]] = {
    PENDING: frozenset({DOWNLOADING, LOADING, GONE}),
    DOWNLOADING: frozenset({LOADING, FAILED, GONE}),
    LOADING: frozenset({TESTING, FAILED, GONE}),
    TESTING: frozenset({READY, FAILED, GONE}),
    READY: frozenset({DRAINING, FAILED}),
    DRAINING: frozenset({GONE}),
    FAILED: frozenset({RESTARTING, GONE}),
    RESTARTING: frozenset({PENDING, DOWNLOADING, LOADING, GONE}),
    GONE: frozenset(),
}
LEGAL_TRANSITIONS: frozenset[tuple[str, str]] = frozenset((a, b) for a, nexts in NEXT_STATES.items() for b in nexts)
TERMINAL_STATES: frozenset[str] = frozenset({GONE})
STARTING_STATES: frozenset[str] = frozenset({PENDING, DOWNLOADING, LOADING, TESTING, RESTARTING})

_HOLDS_GPUS: frozenset[str] = frozenset({DOWNLOADING, LOADING, TESTING, READY, DRAINING, FAILED, RESTARTING})


def _check_state(state: str) -> None:
    if state not in NEXT_STATES:
        raise ValueError(f"unknown replica state '{state}'; known states: {', '.join(STATES)}")


def holds_gpus(state: str) -> bool:
    """Whether a replica in `state` keeps its GPUs allocated (every state but pending and gone; see module doc)."""
    _check_state(state)
    return state in _HOLDS_GPUS


def serves(state: str) -> bool:
    """Whether a replica in `state` may be sent new requests (ready only)."""
    _check_state(state)
    return state == READY


def is_legal(from_state: str, to_state: str) -> bool:
    _check_state(from_state)
    _check_state(to_state)
    return to_state in NEXT_STATES[from_state]


class IllegalTransition(ValueError):
    """A move that the state table does not allow; the message names both states and the legal moves."""

    def __init__(self, replica: str, from_state: str, to_state: str) -> None:
        legal = ", ".join(sorted(NEXT_STATES.get(from_state, ()))) or "none (terminal)"
        who = f"replica '{replica}': " if replica else ""
        super().__init__(f"{who}illegal transition {from_state} -> {to_state}; legal from {from_state}: {legal}")
        self.from_state = from_state
        self.to_state = to_state


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded move: when, from, to, and why."""

    time: float
    from_state: str
    to_state: str
    detail: str = ""


class Lifecycle:
    """One replica's state, with the history of its transitions. Time never goes backwards."""

    __slots__ = ("_entered_at", "_state", "failures", "name", "restarts", "transitions")

    def __init__(self, now: float = 0.0, name: str = "", initial: str = PENDING) -> None:
        _check_state(initial)
        self.name = name
        self._state = initial
        self._entered_at = float(now)
        self.transitions: list[Transition] = []
        self.failures = 0  # times the replica entered `failed`
        self.restarts = 0  # times it entered `restarting` (the CrashLoopBackOff attempt number)

    @property
    def state(self) -> str:
        return self._state

    @property
    def entered_at(self) -> float:
        """When the current state was entered."""
        return self._entered_at

    def time_in_state(self, now: float) -> float:
        return max(0.0, now - self._entered_at)

    @property
    def holds_gpus(self) -> bool:
        return holds_gpus(self._state)

    @property
    def serves(self) -> bool:
        return serves(self._state)

    @property
    def done(self) -> bool:
        return self._state in TERMINAL_STATES

    def can_transition(self, to_state: str) -> bool:
        return is_legal(self._state, to_state)

    def transition(self, now: float, to_state: str, detail: str = "") -> Transition:
        """Move to `to_state` at `now`; raises IllegalTransition (naming both states) if the table forbids it."""
        _check_state(to_state)
        if to_state not in NEXT_STATES[self._state]:
            raise IllegalTransition(self.name, self._state, to_state)
        if now < self._entered_at:
            raise ValueError(f"time went backwards: {now} < {self._entered_at} (state {self._state} entered then)")
        record = Transition(float(now), self._state, to_state, detail)
        self.transitions.append(record)
        self._state = to_state
        self._entered_at = float(now)
        if to_state == FAILED:
            self.failures += 1
        elif to_state == RESTARTING:
            self.restarts += 1
        return record

    def __repr__(self) -> str:
        return f"Lifecycle(name={self.name!r}, state={self._state!r}, since={self._entered_at})"


class RestartBackoffParams(PolicyParams):
    """`restart-backoff` / `crashloop`: Kubernetes CrashLoopBackOff.

    Defaults are the kubelet's (pkg/kubelet/kubelet.go: initial back-off 10 s, MaxContainerBackOff 300 s, doubling
    each restart; the back-off is reset after the container has run for 10 minutes without crashing).
    """

    base_s: Annotated[float, Field(gt=0.0)] = 10.0
    factor: Annotated[float, Field(ge=1.0)] = 2.0
    max_s: Annotated[float, Field(gt=0.0)] = 300.0
    reset_after_s: Annotated[float, Field(gt=0.0)] = 600.0

    @model_validator(mode="after")
    def _check(self) -> RestartBackoffParams:
        if self.max_s < self.base_s:
            raise ValueError("max_s must be >= base_s")
        return self


class RestartBackoff:
    """Delay before restart number `attempt` (1-based): base * factor**(attempt-1), capped at max_s.

    With the defaults: 10, 20, 40, 80, 160, 300, 300, ... seconds.
    """

    __slots__ = ("base_s", "factor", "max_s", "reset_after_s")

    def __init__(self, base_s: float = 10.0, factor: float = 2.0, max_s: float = 300.0, reset_after_s: float = 600.0):
        p = RestartBackoffParams(base_s=base_s, factor=factor, max_s=max_s, reset_after_s=reset_after_s)
        self.base_s = p.base_s
        self.factor = p.factor
        self.max_s = p.max_s
        self.reset_after_s = p.reset_after_s

    @classmethod
    def from_params(cls, params: RestartBackoffParams, rng: np.random.Generator) -> RestartBackoff:
        return cls(params.base_s, params.factor, params.max_s, params.reset_after_s)

    def next_delay(self, attempt: int) -> float:
        if attempt < 1:
            raise ValueError("attempt is 1-based (the first restart is attempt 1)")
        if self.factor == 1.0:
            return min(self.base_s, self.max_s)
        # Stop multiplying once past the cap, so huge attempt numbers never overflow.
        delay = self.base_s
        for _ in range(attempt - 1):
            delay *= self.factor
            if delay >= self.max_s:
                return self.max_s
        return min(delay, self.max_s)

    def attempt_after(self, previous_attempt: int, ran_for_s: float) -> int:
        """The attempt number of the next restart: back to 1 when the container ran `reset_after_s` or longer."""
        if ran_for_s >= self.reset_after_s:
            return 1
        return previous_attempt + 1
