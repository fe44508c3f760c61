"""The simulator's own timers as bare SimPy events: one small object and one heap push each.

`env.timeout(delay, value)` plus `callbacks.append(fn)` runs Timeout's Python __init__, Environment.schedule and
the append for every engine step, decode span and arrival, a few percent of a trace replay's CPU. `wake` pushes the
very entry `Environment.schedule` would push, `(now + delay, NORMAL, next eid, event)`, so events fire in the same
order as the Timeouts they replace and results do not change. The event carries what `Environment.step` reads
(`callbacks`, `_ok`) and the `value` handlers read; nothing can wait on it (no process yields it).
Written against simpy 4.1.2 (pinned): Environment keeps `_queue`, `_eid` and `_now`.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappush
from typing import Any

import simpy
from simpy.core import NORMAL


class Wakeup:
    """A triggered event with one callback (what `Environment.step` needs of an event).

    Built by `wake` without an __init__ call (object.__new__ and two slot stores): `_ok` is a class attribute (a
    wake-up never fails), `callbacks` a one-element tuple (step only iterates it), `value` what the handler reads."""

    __slots__ = ("callbacks", "value")
    _ok = True


_new = object.__new__


def wake(env: simpy.Environment, delay: float, callback: Callable[[Any], None], value: object = None) -> Wakeup:
    """Call `callback(event)` `delay` seconds from now, `event.value` being `value` (env.timeout's order). The
    event is returned: setting its `callbacks` to () cancels the call (the entry stays queued, and fires empty)."""
    if delay < 0:
        raise ValueError(f"negative delay {delay}")
    event = _new(Wakeup)
    event.callbacks = (callback,)
    event.value = value
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), event))  # type: ignore[attr-defined]
    return event
