"""Interval helpers the anomaly detectors share: merging flagged times into episodes, unions of intervals, and
when each replica was ready (from replicas.parquet)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def episodes(times: np.ndarray, gap_s: float) -> list[tuple[float, float, int]]:
    """Sorted flagged `times` grouped into episodes: a new one starts where the gap to the previous time exceeds
    `gap_s`. Each: (first time, last time, how many times)."""
    if len(times) == 0:
        return []
    t = np.sort(np.asarray(times, dtype=np.float64))
    cuts = np.flatnonzero(np.diff(t) > gap_s) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(t)]))
    return [(float(t[a]), float(t[b - 1]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def union(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals [lo, hi) as sorted, disjoint intervals (empty ones dropped)."""
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if len(lo) == 0:
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    new = np.concatenate(([True], lo[1:] > reach[:-1]))
    idx = np.flatnonzero(new)
    out_hi = np.maximum.reduceat(hi, idx)
    return lo[idx], out_hi


def inside(times: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each time, whether it lies in one of the disjoint sorted intervals [lo, hi)."""
    if len(lo) == 0:
        return np.zeros(len(times), dtype=bool)
    i = np.searchsorted(lo, times, side="right") - 1
    ok = i >= 0
    res = np.zeros(len(times), dtype=bool)
    res[ok] = times[ok] < hi[i[ok]]
    return res


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a boolean array: (first index, one past the last)."""
    if not flags.any():
        return []
    d = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def ready_intervals(replicas: pd.DataFrame, end_s: float) -> dict[str, tuple[str, list[tuple[float, float]]]]:
    """Per replica: its model and the intervals it was `ready` (from its `ready` row to its next state row, or
    `end_s`). A replica stopped at the run's end (`stopped`) was ready until then."""
    out: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    if replicas is None or len(replicas) == 0:
        return out
    frame = replicas[["time_s", "model", "replica", "state"]].copy()
    frame["model"] = frame["model"].astype(str)
    frame["replica"] = frame["replica"].astype(str)
    frame["state"] = frame["state"].astype(str)
    frame = frame.sort_values("time_s", kind="stable")
    for name, rows in frame.groupby("replica", sort=False):
        times = rows["time_s"].to_numpy(dtype=np.float64)
        states = rows["state"].to_numpy()
        spans = []
        for i, state in enumerate(states):
            if state == "ready":
                until = times[i + 1] if i + 1 < len(times) else end_s
                if until > times[i]:
                    spans.append((float(times[i]), float(until)))
        out[str(name)] = (str(rows["model"].iloc[0]), spans)
    return out


def ready_mask(spans: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    """Whether each grid time lies in one of `spans`."""
    mask = np.zeros(len(grid), dtype=bool)
    for lo, hi in spans:
        mask |= (grid >= lo) & (grid < hi)
    return mask


def count_open(starts: np.ndarray, ends: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """How many intervals [start, end) hold each grid time (starts and ends need not be sorted)."""
    s = np.sort(starts)
    e = np.sort(ends)
    return np.searchsorted(s, grid, side="right") - np.searchsorted(e, grid, side="right")


def count_on_grid(starts: np.ndarray, ends: np.ndarray, step: float, n: int) -> np.ndarray:
    """`count_open` on the grid 0, step, 2 step, ... (n points) without sorting: an interval [start, end) holds
    point k when ceil(start / step) <= k < ceil(end / step), so counts are cumulative sums of bincounts (exact up
    to the rounding of start / step at a point's very edge, which a sampled detector can afford)."""
    lo = np.clip(np.ceil(starts / step), 0, n).astype(np.int64)
    hi = np.clip(np.ceil(ends / step), 0, n).astype(np.int64)
    return np.cumsum(np.bincount(lo, minlength=n + 1)[:n] - np.bincount(hi, minlength=n + 1)[:n])
