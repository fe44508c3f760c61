"""Anomaly detection over a run's tables: what went wrong, where and when, counted in the summary.

Each detector (odhsim/explain/detectors.py, one function per kind) reads the tidy tables a run writes
(requests, events, timeseries, replicas) and returns `Anomaly` records, one per episode: a time span on a model
(and a replica where one is to blame). `detect` runs them all; `anomaly_events` turns the records into
events.parquet rows (kind `anomaly`); `anomaly_counts` is `summary["anomalies"]`: every kind, zero included, so
"none found" is stated rather than left out. Thresholds live in `AnomalySettings`; each detector's docstring
defines its anomaly and says where its thresholds come from.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from odhsim.explain.anomaly_types import KINDS, Anomaly, AnomalySettings, RunTables
from odhsim.explain.detectors import DETECTORS

__all__ = [
    "KINDS",
    "Anomaly",
    "AnomalySettings",
    "RunTables",
    "anomaly_counts",
    "anomaly_events",
    "anomaly_frame",
    "describe",
    "detect",
    "find_anomalies",
    "with_anomaly_events",
]


def detect(tables: RunTables, settings: AnomalySettings) -> list[Anomaly]:
    """Every detector's episodes, ordered by start time then kind."""
    found: list[Anomaly] = []
    for kind in KINDS:
        found.extend(DETECTORS[kind](tables, settings))
    return sorted(found, key=lambda a: (a.start_s, KINDS.index(a.kind), a.model, a.replica))


def anomaly_counts(found: list[Anomaly]) -> dict[str, int]:
    """`summary["anomalies"]`: episodes per kind, every kind listed."""
    counts = dict.fromkeys(KINDS, 0)
    for a in found:
        counts[a.kind] += 1
    return counts


def describe(a: Anomaly) -> str:
    """'herding 12.0-15.0 s (chat/chat-0): 30 of 31 dispatches ...' : one line for events and the CLI."""
    where = "/".join(x for x in (a.model, a.replica) if x)
    return f"{a.kind} {a.start_s:.2f}-{a.end_s:.2f} s" + (f" ({where})" if where else "") + f": {a.detail}"


def anomaly_events(found: list[Anomaly]) -> list[dict[str, Any]]:
    """events.parquet rows (kind `anomaly`) at each episode's start; the detail names the kind and the span."""
    return [
        {"time_s": a.start_s, "kind": "anomaly", "model": a.model, "replica": a.replica, "detail": describe(a)}
        for a in found
    ]


def anomaly_frame(found: list[Anomaly]) -> pd.DataFrame:
    """The episodes as a table (for `odhsim explain --json` and notebooks)."""
    cols = ["kind", "model", "replica", "start_s", "end_s", "count", "detail"]
    return pd.DataFrame([{c: getattr(a, c) for c in cols} for a in found], columns=cols)


def find_anomalies(
    scenario: Any,
    requests: pd.DataFrame,
    events: pd.DataFrame,
    timeseries: pd.DataFrame,
    replicas: pd.DataFrame,
    end_s: float,
    cache_lookups: list[tuple[float, int, bool, int]] | None = None,
) -> list[Anomaly]:
    """The simulator's hook (odhsim.sim.run): every detector over the run's tables, thresholds from `scenario`."""
    lookups = None
    if cache_lookups is not None:
        lookups = pd.DataFrame(cache_lookups, columns=["time_s", "key", "hit", "row"])
    tables = RunTables(requests, events, timeseries, replicas, end_s, cache_lookups=lookups)
    return detect(tables, AnomalySettings.from_scenario(scenario))


def with_anomaly_events(events: pd.DataFrame, found: list[Anomaly]) -> pd.DataFrame:
    """`events` plus one `anomaly` row per episode, in time order (stable: rows at one time keep their order)."""
    if not found:
        return events
    rows = pd.DataFrame(anomaly_events(found), columns=list(events.columns))
    merged = pd.concat([events, rows], ignore_index=True)
    return merged.sort_values("time_s", kind="stable", ignore_index=True)
