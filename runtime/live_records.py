"""The live run's records: events and replica states, timed by the run's clock (the simulator's columns)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd

EVENT_COLUMNS = ["time_s", "kind", "model", "replica", "detail"]
STATE_COLUMNS = ["time_s", "model", "replica", "state"]


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One row of events.parquet (the simulator's columns)."""

    time_s: float
    kind: str
    model: str
    replica: str
    detail: str


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One row of replicas.parquet: a replica entered `state` at `time_s`."""

    time_s: float
    model: str
    replica: str
    state: str


class EventLog:
    """Events and replica states of a live run, timed by the run's clock; `sink` sees each event as it happens
    (serve appends them to events.jsonl, so a run can be followed while it goes)."""

    def __init__(self, clock: Callable[[], float], sink: Callable[[LiveEvent], None] | None = None) -> None:
        self.clock = clock
        self.sink = sink
        self.events: list[LiveEvent] = []
        self.states: list[StateRecord] = []

    def event(self, kind: str, model: str, replica: str = "", detail: str = "") -> LiveEvent:
        ev = LiveEvent(self.clock(), kind, model, replica, detail)
        self.events.append(ev)
        if self.sink is not None:
            self.sink(ev)
        return ev

    def state(self, model: str, replica: str, state: str) -> None:
        self.states.append(StateRecord(self.clock(), model, replica, state))

    def events_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(e) for e in self.events], columns=EVENT_COLUMNS)

    def states_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(s) for s in self.states], columns=STATE_COLUMNS)
