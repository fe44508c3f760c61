"""Decision records as one tidy table (`decisions.parquet`), the same for the simulator and `odhsim serve`.

One row per decision (policies.decisions), in the order the cores made them. Columns common to every kind:

- `time_s`, `kind` (route, admission, queue, retry, breaker, ejection, scale), `model`;
- `request_id` (-1: none, for transitions and scale decisions), `attempt` (the attempt routed, or the one that
  failed; -1: none), `priority` (critical, high, normal, low; "" when none);
- `action`: route pick | none; admission admit | shed; queue pop | evict | expire; retry retry | fallback | fail |
  excused; breaker / ejection the new state; scale up | down | hold;
- `replica`: the pick (route), the target model (retry), the replica (ejection), else "";
- `reason`: why (the admission policy's or the retry policy's words, the picker's name, a breaker's transition);
- `saturation` (admission), `waited_s` and `queue_len` (queue; queue_len also for admission: the queue's length
  after), `metrics_age_s` (route: how old the picked replica's metrics were), `backoff_s` and `failure` (retry),
  `from_state` / `to_state` (breaker, ejection), `current` / `desired` and `inputs` (scale: the metrics snapshot,
  a struct); NaN, -1, "" or null where a kind has none;
- `candidates` (route only; null otherwise): a list of structs, one per replica considered: name, filtered_by (""
  when it was scored), waiting, running, kv_usage, metrics_age_s, prefix_blocks (-1: the router keeps no prefix
  index), total, and `scores`, a list of {scorer, weight, raw, clamped}.

`candidates_frame(df)` explodes the candidates to one row per (decision, candidate, scorer). The nested columns are
kept Arrow-backed (pandas ArrowDtype) in memory: converting them to Python dicts would cost more than the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from policies.decisions import (
    ADMISSION,
    QUEUE,
    RETRY,
    ROUTE,
    SCALE,
    AdmissionRecord,
    Candidate,
    Decision,
    QueueRecord,
    RetryRecord,
    RouteRecord,
    ScaleInputs,
    ScaleRecord,
    Transition,
)

SCORE_TYPE = pa.struct(
    [("scorer", pa.string()), ("weight", pa.float64()), ("raw", pa.float64()), ("clamped", pa.float64())]
)
CANDIDATE_FIELDS = (
    ("name", pa.string()),
    ("filtered_by", pa.string()),
    ("waiting", pa.int64()),
    ("running", pa.int64()),
    ("kv_usage", pa.float64()),
    ("metrics_age_s", pa.float64()),
    ("prefix_blocks", pa.int64()),
    ("total", pa.float64()),
)
CANDIDATE_TYPE = pa.struct([*CANDIDATE_FIELDS, ("scores", pa.list_(SCORE_TYPE))])
_CANDIDATE_AT = tuple((Candidate._fields.index(name), typ) for name, typ in CANDIDATE_FIELDS)
"""Where each struct field of a candidate sits in the Candidate record."""
INPUTS_TYPE = pa.struct(
    [(name, pa.int64() if name in ("ready_replicas", "pending_replicas", "queue_len") else pa.float64())
     for name in ScaleInputs._fields]
)  # fmt: skip
SCALARS = (
    ("time_s", pa.float64()),
    ("kind", pa.string()),
    ("request_id", pa.int64()),
    ("model", pa.string()),
    ("attempt", pa.int64()),
    ("priority", pa.string()),
    ("action", pa.string()),
    ("replica", pa.string()),
    ("reason", pa.string()),
    ("saturation", pa.float64()),
    ("waited_s", pa.float64()),
    ("queue_len", pa.int64()),
    ("metrics_age_s", pa.float64()),
    ("backoff_s", pa.float64()),
    ("failure", pa.string()),
    ("from_state", pa.string()),
    ("to_state", pa.string()),
    ("current", pa.int64()),
    ("desired", pa.int64()),
)
SCHEMA = pa.schema([*SCALARS, ("inputs", INPUTS_TYPE), ("candidates", pa.list_(CANDIDATE_TYPE))])
"""decisions.parquet's columns (before the run_id / seed / scenario tags a run result adds), in order."""
COLUMNS = tuple(SCHEMA.names)

_NAN = math.nan


def _scalar_row(r: Decision) -> tuple:
    """The common columns of one record other than a route, in SCALARS order."""
    if r.kind == QUEUE:
        assert isinstance(r, QueueRecord)
        return (r.time_s, QUEUE, r.request_id, r.model, -1, r.priority, r.action, "", "", _NAN, r.waited_s,
                r.queue_len, _NAN, _NAN, "", "", "", -1, -1)  # fmt: skip
    if r.kind == ADMISSION:
        assert isinstance(r, AdmissionRecord)
        action = "admit" if r.admitted else "shed"
        return (r.time_s, ADMISSION, r.request_id, r.model, -1, r.priority, action, "", r.reason, r.saturation,
                _NAN, r.queue_len, _NAN, _NAN, "", "", "", -1, -1)  # fmt: skip
    if r.kind == RETRY:
        assert isinstance(r, RetryRecord)
        return (r.time_s, RETRY, r.request_id, r.model, r.attempt, "", r.action, r.target, r.reason, _NAN, _NAN, -1,
                _NAN, r.backoff_s, r.failure, "", "", -1, -1)  # fmt: skip
    if r.kind == SCALE:
        assert isinstance(r, ScaleRecord)
        action = "up" if r.desired > r.current else "down" if r.desired < r.current else "hold"
        return (r.time_s, SCALE, -1, r.model, -1, "", action, "", r.reason, _NAN, _NAN, -1, _NAN, _NAN, "", "", "",
                r.current, r.desired)  # fmt: skip
    assert isinstance(r, Transition), f"unknown decision record {r!r}"
    return (r.time_s, r.kind, -1, r.model, -1, "", r.to_state, r.subject, r.reason, _NAN, _NAN, -1, _NAN, _NAN, "",
            r.from_state, r.to_state, -1, -1)  # fmt: skip


def _route_columns(routes: Sequence[RouteRecord]) -> list[pa.Array]:
    """The common columns of route records, column by column (they are most of the rows: one per attempt)."""
    n = len(routes)
    by_field = {
        "time_s": [r.time_s for r in routes],
        "kind": [ROUTE] * n,
        "request_id": [r.request_id for r in routes],
        "model": [r.model for r in routes],
        "attempt": [r.attempt for r in routes],
        "priority": [r.priority for r in routes],
        "action": ["pick" if r.pick else "none" for r in routes],
        "replica": [r.pick for r in routes],
        "reason": [r.reason for r in routes],
        "metrics_age_s": [r.metrics_age_s for r in routes],
    }
    out = []
    for name, typ in SCALARS:
        values = by_field.get(name)
        if values is None:  # a column routes leave empty
            if pa.types.is_floating(typ):
                out.append(pa.array(np.full(n, np.nan), typ))
            elif pa.types.is_integer(typ):
                out.append(pa.array(np.full(n, -1, np.int64), typ))
            else:
                out.append(pa.array([""] * n, typ))
        else:
            out.append(pa.array(values, typ))
    return out


def _candidates_array(routes: Sequence[RouteRecord]) -> pa.Array:
    """The `candidates` column of route records, built column-wise (offsets + flat child arrays)."""
    cands = [c for r in routes for c in r.candidates]
    offsets = np.zeros(len(routes) + 1, np.int32)
    np.cumsum([len(r.candidates) for r in routes], out=offsets[1:])
    children = [pa.array([c[i] for c in cands], typ) for i, typ in _CANDIDATE_AT]
    # each scored candidate's raw scores follow its decision's (scorer, weight) pairs
    meta = [m for r in routes for c in r.candidates if c.raw for m in r.scorers]
    raw = np.array([v for c in cands for v in c.raw], np.float64)
    score_offsets = np.zeros(len(cands) + 1, np.int32)
    np.cumsum([len(c.raw) for c in cands], out=score_offsets[1:])
    clamped = np.nan_to_num(np.clip(raw, 0.0, 1.0), nan=0.0)  # policies.decisions.clamp, vectorised
    scores = pa.StructArray.from_arrays(
        [pa.array([m[0] for m in meta], pa.string()), pa.array([m[1] for m in meta], pa.float64()),
         pa.array(raw, pa.float64()), pa.array(clamped, pa.float64())],
        fields=list(SCORE_TYPE),
    )  # fmt: skip
    score_lists = pa.ListArray.from_arrays(pa.array(score_offsets), scores)
    candidates = pa.StructArray.from_arrays([*children, score_lists], fields=list(CANDIDATE_TYPE))
    return pa.ListArray.from_arrays(pa.array(offsets), candidates, type=SCHEMA.field("candidates").type)


def decisions_table(records: Sequence[Decision]) -> pa.Table:
    """The records as an Arrow table with SCHEMA, in their order."""
    is_route = np.fromiter((r.kind == ROUTE for r in records), bool, len(records))
    routes: list[RouteRecord] = [r for r in records if r.kind == ROUTE]  # type: ignore[misc]
    others = [r for r in records if r.kind != ROUTE]
    route_table = pa.Table.from_arrays(
        [*_route_columns(routes), pa.nulls(len(routes), INPUTS_TYPE), _candidates_array(routes)], schema=SCHEMA
    )
    rows = [_scalar_row(r) for r in others]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in SCALARS]
    arrays = [pa.array(col, typ) for col, (_, typ) in zip(columns, SCALARS, strict=True)]
    inputs = pa.array([r.inputs._asdict() if r.kind == SCALE else None for r in others], INPUTS_TYPE)  # type: ignore[union-attr]
    arrays += [inputs, pa.nulls(len(others), SCHEMA.field("candidates").type)]
    other_table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    if not others:
        return route_table
    if not routes:
        return other_table
    # back into the records' order: routes first, then the others, taken by position
    order = np.empty(len(records), np.int64)
    order[is_route] = np.arange(len(routes))
    order[~is_route] = len(routes) + np.arange(len(others))
    return pa.concat_tables([route_table, other_table]).take(pa.array(order))


def _nested(t: pa.DataType) -> pd.ArrowDtype | None:
    return pd.ArrowDtype(t) if pa.types.is_nested(t) else None


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Plain numpy columns for the scalars, Arrow-backed ones for `inputs` and `candidates`."""
    return table.to_pandas(types_mapper=_nested)


def decisions_frame(records: Sequence[Decision]) -> pd.DataFrame:
    """decisions.parquet's table, in memory."""
    return to_frame(decisions_table(records))


def write_decisions(df: pd.DataFrame, path: str | Path) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def read_decisions(path: str | Path) -> pd.DataFrame:
    return to_frame(pq.read_table(path))


_KEYS = ("run_id", "seed", "scenario", "time_s", "request_id", "model", "attempt", "priority", "replica")


def candidates_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (routing decision, candidate, scorer): the decision's keys (run_id, seed, scenario when present,
    time_s, request_id, model, attempt, priority, and `pick`, the replica it chose), the candidate's fields and
    `picked`, then scorer, weight, raw, clamped. A candidate no scorer saw (filtered, or a router without
    scorers) has one row with a null scorer and NaN scores."""
    routes = df[df["kind"] == ROUTE]
    keys = [k for k in _KEYS if k in routes.columns]
    columns = [*("pick" if k == "replica" else k for k in keys), *(n for n, _ in CANDIDATE_FIELDS), "picked",
               *SCORE_TYPE.names]  # fmt: skip
    if routes.empty:
        return pd.DataFrame(columns=columns)
    lists = pa.array(routes["candidates"].array)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    parent = pc.list_parent_indices(lists).to_numpy()
    cand = pc.list_flatten(lists)
    score_lists = cand.field("scores")
    n_scores = pc.fill_null(pc.list_value_length(score_lists), 0).to_numpy().astype(np.int64)
    reps = np.maximum(n_scores, 1)  # a candidate without scores keeps one row
    base = routes[keys].iloc[parent].reset_index(drop=True).rename(columns={"replica": "pick"})
    for name, _ in CANDIDATE_FIELDS:
        base[name] = cand.field(name).to_numpy(zero_copy_only=False)
    base["picked"] = base["name"] == base["pick"]
    out = base.loc[base.index.repeat(reps)].reset_index(drop=True)
    # the rows that carry a score: each scored candidate's first row (its start), then one per further scorer
    starts = np.repeat(np.cumsum(reps) - reps, n_scores)
    firsts = np.repeat(np.cumsum(n_scores) - n_scores, n_scores)
    scored_rows = starts + (np.arange(int(n_scores.sum())) - firsts)
    flat = pc.list_flatten(score_lists)
    scorer = np.full(len(out), None, dtype=object)
    scorer[scored_rows] = flat.field("scorer").to_numpy(zero_copy_only=False)
    out["scorer"] = scorer
    for name in ("weight", "raw", "clamped"):
        values = np.full(len(out), np.nan)
        values[scored_rows] = flat.field(name).to_numpy(zero_copy_only=False)
        out[name] = values
    return out[columns]


def merge_in_time(records: Sequence[Decision], later: Sequence[Decision]) -> list[Decision]:
    """`records` (in the order the cores made them) with `later` (collected afterwards: transitions) placed among
    them by time, after any record of the same time."""
    if not later:
        return list(records)
    out = list(records)
    for r in sorted(later, key=lambda d: d.time_s):
        lo, hi = 0, len(out)
        while lo < hi:  # insertion point after every record with time_s <= r.time_s
            mid = (lo + hi) // 2
            if out[mid].time_s <= r.time_s:
                lo = mid + 1
            else:
                hi = mid
        out.insert(lo, r)
    return out
