"""The anomaly detectors, one function per kind (odhsim.explain.anomaly_types defines the records and settings).

Every detector reads only the run's tables, so a results folder can be re-examined after the fact; each returns one
`Anomaly` per episode. Thresholds are `AnomalySettings` fields; where a value is a choice rather than a published
figure, the docstring says so.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from odhsim.explain.anomaly_types import Anomaly, AnomalySettings, Detector, RunTables
from odhsim.explain.spans import count_on_grid, count_open, episodes, inside, ready_intervals, ready_mask, runs, union
from odhsim.workload.schema import PRIORITY_CLASSES


@dataclass(frozen=True)
class _Cols:
    """The requests table as numpy arrays; model and replica as category codes (replica -1: none), so the
    detectors compare integers, not strings, over up to millions of rows."""

    model: np.ndarray
    model_names: list[str]
    replica: np.ndarray
    replica_names: list[str]
    priority: np.ndarray
    arrival: np.ndarray
    start: np.ndarray
    first: np.ndarray
    finish: np.ndarray
    prompt: np.ndarray
    ok: np.ndarray
    request_id: np.ndarray


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
    return cat.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in cat.cat.categories]


def _cols(tables: RunTables) -> _Cols:
    """The requests' arrays, built once per RunTables (kept in its `extra`)."""
    cached = tables.extra.get("_cols")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    r = tables.requests
    model, model_names = _codes(r["model"])
    replica, replica_names = _codes(r["replica"])
    prio = r["priority"]
    if not (isinstance(prio.dtype, pd.CategoricalDtype) and list(prio.cat.categories) == list(PRIORITY_CLASSES)):
        prio = pd.Series(pd.Categorical(prio.astype(str), categories=list(PRIORITY_CLASSES)))
    priority = prio.cat.codes.to_numpy(dtype=np.int64)
    cols = _Cols(
        model=model,
        model_names=model_names,
        replica=replica,
        replica_names=replica_names,
        priority=priority,
        arrival=r["arrival_s"].to_numpy(dtype=np.float64),
        start=r["start_s"].to_numpy(dtype=np.float64),
        first=r["first_token_s"].to_numpy(dtype=np.float64),
        finish=r["finish_s"].to_numpy(dtype=np.float64),
        prompt=r["prompt_tokens"].to_numpy(dtype=np.int64),
        ok=(r["status"] == "ok").to_numpy(),
        request_id=r["request_id"].to_numpy(dtype=np.int64),
    )
    tables.extra["_cols"] = cols
    return cols


def priority_inversion(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """A request of a lower class starts service on a model while a request of a higher class for the same model
    has been waiting (arrived, not started) longer than its class's TTFT target: the system served the lower
    class first although the higher one was already late. The target is the run's SLO (`slos`); inverted starts
    of any class closer than `episode_gap_s` (5 s, a choice) form one episode. A request never started (shed, timed out,
    failed, unfinished) waits until it ended (or the run's end)."""
    c = _cols(tables)
    out: list[Anomaly] = []
    end_of_wait = _wait_end(c, tables.end_s)
    for mi, model in enumerate(c.model_names):
        mine = c.model == mi
        prio = c.priority[mine]
        arrival, started, waited_until = c.arrival[mine], c.start[mine], end_of_wait[mine]
        hit_t, hit_class = [], []
        for low in range(1, len(PRIORITY_CLASSES)):
            starts = started[prio == low]
            starts = starts[~np.isnan(starts)]
            lo_parts, hi_parts = [], []
            for high in range(low):
                target = s.ttft_targets[high]
                if target is not None:
                    sel = prio == high
                    lo_parts.append(arrival[sel] + target)
                    hi_parts.append(waited_until[sel])
            if len(starts) == 0 or not lo_parts:
                continue
            lo, hi = union(np.concatenate(lo_parts), np.concatenate(hi_parts))
            hit = starts[inside(starts, lo, hi)]
            hit_t.append(hit)
            hit_class.append(np.full(len(hit), low))
        if not hit_t:
            continue
        times, classes = np.concatenate(hit_t), np.concatenate(hit_class)
        order = np.argsort(times, kind="stable")
        times, classes = times[order], classes[order]
        for t0, t1, n in episodes(times, s.episode_gap_s):
            sel = classes[(times >= t0) & (times <= t1)]
            per = ", ".join(f"{PRIORITY_CLASSES[k]} {int((sel == k).sum())}" for k in np.unique(sel))
            out.append(Anomaly("priority_inversion", model, "", t0, t1, n,
                               f"{n} lower-class request(s) started ({per}) while a higher class waited past its "
                               "TTFT target"))  # fmt: skip
    return out


def _wait_end(c: _Cols, end_s: float) -> np.ndarray:
    """When each request stopped waiting: its start, else its end (shed, failed, timed out), else the run's end."""
    return np.where(np.isnan(c.start), np.where(np.isnan(c.finish), end_s, c.finish), c.start)


def head_of_line_blocking(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """A large request at the head of a replica's FCFS waiting queue holds back smaller ones behind it: vLLM's
    scheduler stops at the first waiting request that does not fit the free KV blocks. Seen in the tables as a
    request H that waited, during whose wait (from the first blocked request's arrival to H's start) the replica
    finished at least `hol_min_finishes` (2) requests yet started none (capacity came back and went unused), and
    then, between H's start and its first token, started at least `hol_min_blocked` (2) requests that had arrived
    after H, had waited at least `hol_min_wait_s` (0.5 s) and each had at most 1 / `hol_size_ratio` (1/4) of H's
    prompt. The numbers are choices; the mechanism is vLLM's FCFS admission (scheduler `_schedule_prefills`)."""
    c = _cols(tables)
    out: list[Anomaly] = []
    started = ~np.isnan(c.start)
    for ri in np.unique(c.replica[started & (c.replica >= 0)]):
        mine = np.flatnonzero(started & (c.replica == ri))
        if len(mine) < s.hol_min_blocked + 1 or c.prompt[mine].max() < s.hol_size_ratio * c.prompt[mine].min():
            continue  # no prompt here is hol_size_ratio times another: nothing can block smaller ones
        arr, st, first, pr, fin = c.arrival[mine], c.start[mine], c.first[mine], c.prompt[mine], c.finish[mine]
        order = np.argsort(st, kind="stable")
        st_sorted = st[order]
        fin_sorted = np.sort(fin[~np.isnan(fin)])
        waited = st - arr
        # necessary for any blocked window: at least hol_min_finishes finishes since the replica's previous start,
        # and a prompt at least hol_size_ratio times the replica's smallest
        prev = np.searchsorted(st_sorted, st, side="left") - 1
        since = np.where(prev >= 0, st_sorted[np.maximum(prev, 0)], -np.inf)
        freed = np.searchsorted(fin_sorted, st, side="left") - np.searchsorted(fin_sorted, since, side="right")
        big = pr >= s.hol_size_ratio * pr.min()
        heads = np.flatnonzero((waited >= s.hol_min_wait_s) & (freed >= s.hol_min_finishes) & big)
        for h in heads:
            until = first[h] if first[h] == first[h] else st[h]
            lo_i = np.searchsorted(st_sorted, st[h], side="left")
            hi_i = np.searchsorted(st_sorted, until, side="right")
            cand = order[lo_i:hi_i]
            blocked = cand[(arr[cand] > arr[h]) & (arr[cand] < st[h]) & (st[cand] - arr[cand] >= s.hol_min_wait_s)
                           & (pr[cand] * s.hol_size_ratio <= pr[h])]  # fmt: skip
            if len(blocked) < s.hol_min_blocked:
                continue
            w0 = float(arr[blocked].min())
            starts_in = lo_i - np.searchsorted(st_sorted, w0, side="left")
            finishes_in = np.searchsorted(fin_sorted, st[h], side="left") - np.searchsorted(fin_sorted, w0, "left")
            if starts_in > 0 or finishes_in < s.hol_min_finishes:
                continue
            row = mine[h]
            out.append(Anomaly("head_of_line_blocking", c.model_names[c.model[row]], c.replica_names[ri], w0,
                               float(st[h]), len(blocked),
                               f"request {int(c.request_id[row])} ({int(pr[h])} prompt tokens) held {len(blocked)} "
                               f"smaller request(s) while {int(finishes_in)} finished and none started"))  # fmt: skip
    return out


def herding(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """A burst sent to one replica on stale metrics: within one window (the scrape interval, at least
    `herding_min_window_s` = 1 s; every request in a tick sees the same scraped numbers, as Mooncake's 3 s ticks
    showed), one replica of a model with several ready ones got at least `herding_min_share` (75%) of at least
    `herding_min_requests` (8) dispatches, a concentration uniform random routing produces with probability below
    `herding_p_value` (1e-4: binomial tail times the replica count). Dispatch time is the request's arrival
    (routing happens on arrival without a gateway queue); adjacent flagged windows form one episode. The share and
    size floors are choices; the p-value keeps random routing on few replicas from being flagged by chance."""
    c = _cols(tables)
    window = max(s.scrape_interval_s, s.herding_min_window_s)
    ready = ready_intervals(tables.replicas, tables.end_s)
    out: list[Anomaly] = []
    routed = c.replica >= 0
    n_rep = max(len(c.replica_names), 1)
    for mi, model in enumerate(c.model_names):
        sel = routed & (c.model == mi)
        if sel.sum() < s.herding_min_requests:
            continue
        spans = [sp for m, sp in ready.values() if m == model]
        tick = np.floor(c.arrival[sel] / window).astype(np.int64)
        combined = tick * n_rep + c.replica[sel]
        if len(combined) and combined.min() >= 0 and combined.max() < 8 * len(combined) + 1024:  # dense: no sort
            counted = np.bincount(combined)
            keys = np.flatnonzero(counted)
            per = counted[keys]
        else:
            keys, per = np.unique(combined, return_counts=True)
        ticks, first = np.unique(keys // n_rep, return_index=True)
        totals = np.add.reduceat(per, first)
        top = np.maximum.reduceat(per, first)
        flagged: list[tuple[int, str, int, int]] = []
        for i in np.flatnonzero((totals >= s.herding_min_requests) & (top >= s.herding_min_share * totals)):
            n, k, t = int(totals[i]), int(top[i]), int(ticks[i])
            at = t * window
            n_ready = sum(1 for sp in spans if any(lo <= at < hi for lo, hi in sp))
            if n_ready < 2:
                continue
            p = min(1.0, n_ready * _binomial_tail(k, n, 1.0 / n_ready))
            if p < s.herding_p_value:
                end = first[i + 1] if i + 1 < len(first) else len(keys)
                j = first[i] + int(np.argmax(per[first[i] : end]))
                flagged.append((t, c.replica_names[int(keys[j] % n_rep)], k, n))
        i = 0
        while i < len(flagged):
            j = i
            while j + 1 < len(flagged) and flagged[j + 1][0] == flagged[j][0] + 1:
                j += 1
            group = flagged[i : j + 1]
            k, n = sum(g[2] for g in group), sum(g[3] for g in group)
            names = sorted({g[1] for g in group})
            t0, t1 = group[0][0] * window, (group[-1][0] + 1) * window
            out.append(Anomaly("herding", model, names[0] if len(names) == 1 else "", t0, t1, len(group),
                               f"{k} of {n} dispatches went to {', '.join(names)} within {len(group)} window(s) "
                               f"of {window:g} s"))  # fmt: skip
            i = j + 1
    return out


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (scipy.stats would cost its import on every run)."""
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    return math.fsum(
        math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq) for i in range(k, n + 1)
    )


def preemption_storm(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """KV thrashing: in a timeseries bucket a model's replicas preempted (recompute) at least `storm_min_rate_s`
    (1) requests per second of the bucket and at least `storm_per_completion` (0.5) per request completed in the
    bucket, i.e. recomputed work rivals finished work. vLLM logs every recompute preemption as a warning that
    end-to-end performance suffers; the numbers are choices. Adjacent buckets form one episode. Needs the
    timeseries' `preemptions` column (results without it report none)."""
    ts = tables.timeseries
    if ts is None or len(ts) == 0 or "preemptions" not in ts or not (ts["preemptions"] > 0).any():
        return []
    c = _cols(tables)
    out: list[Anomaly] = []
    for model, rows in ts.groupby(ts["model"].astype(str), sort=True):
        times = rows["time_s"].to_numpy(dtype=np.float64)
        pre = rows["preemptions"].to_numpy(dtype=np.float64)
        mi = c.model_names.index(model) if model in c.model_names else -1
        fin = np.sort(c.finish[c.ok & (c.model == mi)])
        lows = np.concatenate(([0.0], times[:-1]))
        done = np.searchsorted(fin, times, side="right") - np.searchsorted(fin, lows, side="right")
        flags = (pre >= s.storm_min_rate_s * (times - lows)) & (pre > 0) & (pre >= s.storm_per_completion * done)
        for i, j in runs(flags):
            n = int(pre[i:j].sum())
            out.append(Anomaly("preemption_storm", model, "", float(lows[i]), float(times[j - 1]), n,
                               f"{n} preemptions against {int(done[i:j].sum())} completions"))  # fmt: skip
    return out


_SCALE = re.compile(r"^(?:[^:]*: )?(\d+) -> (\d+)")


def autoscaler_flapping(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """The autoscaler reverses itself: a `scale` event in one direction followed within `flap_window_s` (60 s,
    Knative's default stable window: a decision undone inside the window the autoscaler itself averages over)
    by one in the other direction. Consecutive reversals form one episode (count: reversals)."""
    ev = tables.events
    if ev is None or len(ev) == 0:
        return []
    scale = ev[ev["kind"].astype(str) == "scale"]
    out: list[Anomaly] = []
    for model, rows in scale.groupby(scale["model"].astype(str), sort=True):
        moves: list[tuple[float, int, str]] = []
        for t, detail in zip(rows["time_s"].to_numpy(), rows["detail"].astype(str), strict=True):
            m = _SCALE.match(detail)
            if m and int(m.group(1)) != int(m.group(2)):
                moves.append((float(t), 1 if int(m.group(2)) > int(m.group(1)) else -1, detail))
        chain: list[tuple[float, float, str]] = []  # reversals (from time, to time, details)
        for prev, cur in itertools.pairwise(moves):
            if prev[1] != cur[1] and cur[0] - prev[0] <= s.flap_window_s:
                chain.append((prev[0], cur[0], f"{prev[2]} then {cur[2]}"))
                continue
            if chain:
                out.append(_flap(str(model), chain))
                chain = []
        if chain:
            out.append(_flap(str(model), chain))
    return out


def _flap(model: str, chain: list[tuple[float, float, str]]) -> Anomaly:
    return Anomaly("autoscaler_flapping", model, "", chain[0][0], chain[-1][1], len(chain),
                   f"{len(chain)} reversal(s): " + "; ".join(c[2] for c in chain[:3]))  # fmt: skip


def cache_stampede(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """Many misses of one response-cache key in flight at once: each miss sends the same prompt to a replica
    because the first answer is not stored yet (the thundering herd a cache without request coalescing
    suffers). An episode: at least `stampede_min_concurrent` (3, a choice: the same answer computed three times
    at once) misses of one key overlapping in time (a miss is in flight from its lookup to its request's end).
    Needs the engine's lookup log (`RunTables.cache_lookups`)."""
    log = tables.cache_lookups
    if log is None or len(log) == 0:
        return []
    c = _cols(tables)
    miss = ~log["hit"].to_numpy(dtype=bool)
    t = log["time_s"].to_numpy(dtype=np.float64)[miss]
    key = log["key"].to_numpy()[miss]
    row = log["row"].to_numpy(dtype=np.int64)[miss]
    end = np.where(np.isnan(c.finish[row]), tables.end_s, c.finish[row])
    out: list[Anomaly] = []
    keys, counts = np.unique(key, return_counts=True)
    for k in keys[counts >= s.stampede_min_concurrent]:
        idx = np.flatnonzero(key == k)
        idx = idx[np.argsort(t[idx], kind="stable")]
        group: list[int] = []
        reach = -math.inf
        for i in [*idx.tolist(), -1]:
            if i >= 0 and t[i] < reach:
                group.append(i)
                reach = max(reach, end[i])
                continue
            peak = _peak(t[group], end[group]) if len(group) >= s.stampede_min_concurrent else 0
            if peak >= s.stampede_min_concurrent:
                out.append(Anomaly("cache_stampede", c.model_names[c.model[row[group[0]]]], "", float(t[group[0]]),
                                   float(end[group].max()), len(group),
                                   f"{len(group)} misses of one key in flight together (peak {peak})"))  # fmt: skip
            if i >= 0:
                group, reach = [i], float(end[i])
    return out


def _peak(lo: np.ndarray, hi: np.ndarray) -> int:
    """The most intervals [lo, hi) open at once (the peak is reached at some interval's start)."""
    return int(count_open(lo, hi, lo).max())


def replica_starved(tables: RunTables, s: AnomalySettings) -> list[Anomaly]:
    """A ready replica sits empty (nothing running, nothing waiting on it) for at least `starve_min_s` while
    another replica of the same model has at least `starve_min_queue` (2) requests waiting: the router sends work
    where it queues instead of where it would run. `starve_min_s` is max(5 s, two scrape intervals), since a
    replica that just became ready is invisible until the next scrape; sampled every `starve_grid_s` (0.25 s).
    Choices, not published figures. Waiting on a replica: from arrival to start (or to the end, never started)."""
    c = _cols(tables)
    ready = ready_intervals(tables.replicas, tables.end_s)
    if not ready or tables.end_s <= 0:
        return []
    step = max(s.starve_grid_s, tables.end_s / 20_000)
    grid = np.arange(0.0, tables.end_s, step)
    min_s = max(s.starve_min_s, 2 * s.scrape_interval_s)
    out: list[Anomaly] = []
    end_wait = _wait_end(c, tables.end_s)
    busy_end = np.where(np.isnan(c.finish), tables.end_s, c.finish)
    code = {name: i for i, name in enumerate(c.replica_names)}
    for model in sorted({m for m, _ in ready.values()}):
        names = [n for n, (m, _) in ready.items() if m == model]
        if len(names) < 2:
            continue
        empty, queued = {}, {}
        for name in names:
            sel = c.replica == code.get(name, -2)
            st = sel & ~np.isnan(c.start)
            running = count_on_grid(c.start[st], busy_end[st], step, len(grid))
            waiting = count_on_grid(c.arrival[sel], end_wait[sel], step, len(grid))
            empty[name] = ready_mask(ready[name][1], grid) & (running <= 0) & (waiting <= 0)
            queued[name] = waiting
        for name in names:
            if not empty[name].any():
                continue
            others = np.max([queued[o] for o in names if o != name], axis=0)
            flags = empty[name] & (others >= s.starve_min_queue)
            for i, j in runs(flags):
                if (j - i) * step < min_s:
                    continue
                out.append(Anomaly("replica_starved", model, name, float(grid[i]), float(grid[j - 1] + step), 1,
                                   f"idle for {(j - i) * step:.1f} s while another replica had up to "
                                   f"{int(others[i:j].max())} waiting"))  # fmt: skip
    return out


DETECTORS: dict[str, Detector] = {
    "priority_inversion": priority_inversion,
    "head_of_line_blocking": head_of_line_blocking,
    "herding": herding,
    "preemption_storm": preemption_storm,
    "autoscaler_flapping": autoscaler_flapping,
    "cache_stampede": cache_stampede,
    "replica_starved": replica_starved,
}
