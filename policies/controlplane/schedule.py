"""When the controller observes and when it decides: one rule for both engines.

Observations fall on a fixed grid, `start + k * observe_every_s` (Knative scrapes every second; KServe's
metrics interval); a decision is due at an observation when the decision grid (`start + k * decide_every_s`,
Knative's 2 s tick) has reached it, or when the activator poked (a request waits for a model with no ready
replica). A poke is honoured at the next observation, not between two: the autoscaler always decides on a fresh
sample, and both engines see the same instants. A late tick (the live event loop was busy) observes at once and
catches up on missed decision ticks without deciding more than once.
"""

from __future__ import annotations


class TickSchedule:
    __slots__ = ("_next_decision", "_next_observe", "_poked", "decide_every_s", "observe_every_s")

    def __init__(self, start: float, decide_every_s: float, observe_every_s: float) -> None:
        if decide_every_s <= 0 or observe_every_s <= 0:
            raise ValueError(
                f"decision and metrics intervals must be > 0 (got {decide_every_s:g} s and {observe_every_s:g} s)"
            )
        self.decide_every_s = decide_every_s
        self.observe_every_s = observe_every_s
        self._next_decision = start
        self._next_observe = start
        self._poked = False

    def poke(self) -> None:
        """The activator holds a request: decide at the next observation."""
        self._poked = True

    @property
    def poked(self) -> bool:
        return self._poked

    @property
    def next_observe(self) -> float:
        return self._next_observe

    def tick(self, now: float) -> bool:
        """An observation at `now` (call it at or after `next_observe`); True when a decision is due with it.
        Advances both grids past `now`."""
        due = now >= self._next_decision or self._poked
        self._poked = False
        while self._next_decision <= now:
            self._next_decision += self.decide_every_s
        while self._next_observe <= now:
            self._next_observe += self.observe_every_s
        return due
