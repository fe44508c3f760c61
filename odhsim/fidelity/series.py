"""Queue length and ready replicas on one time grid, computed the same way from either engine's tables.

Queue length is counted from requests.parquet (arrived, no first token yet; a request refused before its first
token waits until its answer), because the live replay has no timeseries of its own: both engines are then held
to the same definition. Ready replicas come from replicas.parquet (state transitions): the live engine writes
those from its controllers, the simulator from its lifecycle log.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

READY_STATE = "ready"


def time_grid(end_s: float, step_s: float) -> np.ndarray:
    """Sample times 0, step, 2 step, ... up to and including `end_s`."""
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    return np.arange(0.0, max(end_s, 0.0) + step_s / 2, step_s)


def waiting_for_first_token(requests: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Requests arrived at or before t whose first token (or, without one, whose answer) came after t."""
    arrival = requests["arrival_s"].to_numpy(dtype=float)
    first = requests["first_token_s"].to_numpy(dtype=float)
    finish = requests["finish_s"].to_numpy(dtype=float)
    until = np.where(np.isnan(first), finish, first)
    until = np.where(np.isnan(until), np.inf, until)  # unfinished: waiting to the end
    arrived = np.searchsorted(np.sort(arrival), grid, side="right")
    served = np.searchsorted(np.sort(until), grid, side="right")
    return (arrived - served).astype(np.int64)


def ready_replicas(replicas: pd.DataFrame, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Per model, how many replicas were in state `ready` at each grid time (the latest transition at or before
    t counts; transitions before 0 give the state at 0)."""
    out: dict[str, np.ndarray] = {}
    if replicas.empty:
        return out
    frame = replicas[["time_s", "model", "replica", "state"]].astype({"model": str, "replica": str, "state": str})
    frame = frame.sort_values("time_s", kind="stable")
    for model, rows in frame.groupby("model", sort=True):
        count = np.zeros(len(grid), dtype=np.int64)
        for _, rep in rows.groupby("replica", sort=False):
            times = rep["time_s"].to_numpy(dtype=float)
            is_ready = (rep["state"].to_numpy() == READY_STATE).astype(np.int64)
            idx = np.searchsorted(times, grid, side="right") - 1  # latest transition at or before t
            count += np.where(idx >= 0, is_ready[np.clip(idx, 0, None)], 0)
        out[str(model)] = count
    return out
