"""Helpers for the trace loaders: vectorised column checks that remember the first bad line, format
detection, and the streaming workload summary. Kept apart from `loaders` so each module stays small.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odhsim.errors import TraceError
from odhsim.workload.schema import RequestBatch

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
PLAIN_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
MAX_TOKENS = 10_000_000
"""The most prompt or output tokens one request may have: ten times the longest context of any served model
(Llama 4 Scout: 10 M). Larger counts are malformed rows; the token histograms are sized by the largest count,
so an unbounded one (1e12) would need terabytes."""
KEEP_LINES = 10
"""How many skipped line numbers `TraceStats.skipped_lines` keeps."""


@dataclass
class TraceStats:
    """What one pass over a trace kept, skipped and clamped."""

    rows: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)
    clamped: int = 0

    def skip(self, lines: Sequence[int] | np.ndarray) -> None:
        self.skipped += len(lines)
        self.skipped_lines = sorted([*self.skipped_lines, *(int(x) for x in lines[:KEEP_LINES])])[:KEEP_LINES]


class Checker:
    """Collects invalid rows of one chunk; remembers the earliest line's message for on_error="raise"."""

    def __init__(self, lines: np.ndarray) -> None:
        self.lines = lines
        self.bad = np.zeros(len(lines), bool)
        self.first: tuple[int, str] | None = None

    def flag(self, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            if self.first is None or self.lines[i] < self.first[0]:
                self.first = (int(self.lines[i]), describe(i))
            self.bad |= mask


def shown(v: object) -> str:
    """A cell as a message shows it: strings quoted, numbers plain (str(np.float64(nan)) is 'nan', not its repr)."""
    return repr(v) if isinstance(v, str) else str(v)


def int_column(chk: Checker, col: pd.Series, label: str, maximum: int | None = None) -> np.ndarray:
    """Integer column; non-integers, negatives and values above `maximum` are flagged (and zeroed)."""
    if pd.api.types.is_integer_dtype(col.dtype):
        num = col.to_numpy(np.int64)
    else:
        num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = ~np.isfinite(num) | (num != np.floor(num))
        chk.flag(
            bad,
            lambda i: (
                f"{label} {shown(col.iloc[i])} is not an integer" if pd.notna(col.iloc[i]) else f"{label} is missing"
            ),
        )
        num = np.where(bad, 0, num)
    chk.flag(num < 0, lambda i: f"{label} {int(num[i])} is negative")
    if maximum is not None:
        big = num > maximum
        chk.flag(big, lambda i: f"{label} {int(num[i])} exceeds the maximum of {maximum:,}")
        num = np.where(big, 0, num)  # before the cast: 1e30 does not fit an int64
    return np.maximum(num, 0).astype(np.int64)


def name_column(chk: Checker, col: pd.Series, label: str, names: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    codes = col.map(index).to_numpy(np.float64, na_value=np.nan)
    chk.flag(np.isnan(codes), lambda i: f"{label} {shown(col.iloc[i])} is not one of {list(names)}")
    return np.nan_to_num(codes).astype(np.int64)


def read_header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise TraceError(f"{path}: cannot read a CSV header ({e})") from None


def has_data_row(path: Path, *, json_lines: bool) -> bool:
    """Whether a trace has a non-blank line after its header (JSON lines: at all), reading no further."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = iter(f)
            if not json_lines:
                next(lines, None)
            return any(text.strip() for text in lines)
    except (OSError, EOFError) as e:
        raise TraceError(f"{path}: cannot read ({e})") from None


def detect_format(path: Path) -> str:
    """Format from the extension (.jsonl/.json -> mooncake) and, for CSV, the header's column names."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "mooncake"
    header = read_header(path)
    if set(AZURE_COLUMNS) & set(header):  # a partial Azure header is reported as missing columns later
        first = pd.read_csv(path, nrows=1, dtype=str).get("TIMESTAMP", pd.Series([], dtype=str))
        tz = len(first) and re.search(r"[+-]\d\d:?\d\d$|Z$", str(first.iloc[0]))
        return "azure2024" if tz else "azure2023"
    if set(PLAIN_COLUMNS) & set(header):
        return "csv"
    raise TraceError(
        f"{path}: cannot detect the trace format from header {header}; expected columns "
        f"{list(AZURE_COLUMNS)} (Azure) or {list(PLAIN_COLUMNS)} (plain CSV), or a .jsonl file (Mooncake)"
    )


def mooncake_row(text: str) -> tuple[float, int, int, list[int]]:
    """One Mooncake record; ValueError says what is wrong with it."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in d]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    ts = d["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"timestamp {ts!r} is not a number")
    lengths = []
    for k in ("input_length", "output_length"):
        v = d[k]
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{k} {v!r} is not an integer")
        if v < 0:
            raise ValueError(f"{k} {v} is negative")
        if v > MAX_TOKENS:
            raise ValueError(f"{k} {int(v)} exceeds the maximum of {MAX_TOKENS:,}")
        lengths.append(int(v))
    h = d.get("hash_ids", [])
    if not isinstance(h, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in h):
        raise ValueError("hash_ids must be a list of integers")
    return float(ts), lengths[0], lengths[1], h


def _grow_add(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values)
    if len(counts) > len(acc):
        acc = np.concatenate([acc, np.zeros(len(counts) - len(acc), np.int64)])
    acc[: len(counts)] += counts
    return acc


def _percentiles(counts: np.ndarray) -> dict[str, float]:
    """Nearest-rank percentiles from exact per-value counts (so 27 M rows need no sort and little memory)."""
    n = int(counts.sum())
    if n == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    cdf = np.cumsum(counts)
    out = {f"p{q}": float(np.searchsorted(cdf, np.ceil(q / 100 * n))) for q in (50, 90, 99)}
    out["max"] = float(np.flatnonzero(counts)[-1])
    out["mean"] = float(np.dot(counts, np.arange(len(counts), dtype=np.float64)) / n)
    return out


def summarize(batches: Iterable[RequestBatch]) -> dict[str, Any]:
    """Streaming summary of any workload: count, span, rate, token percentiles, prefix-block reuse.

    Reuse fraction = block occurrences whose id was already seen earlier in the stream (an unlimited cache's
    hit rate) over all block occurrences; None when there are no blocks.
    """
    n, span = 0, 0.0
    first: float | None = None
    prompt = output = np.zeros(0, np.int64)
    seen = np.zeros(0, np.int64)
    occurrences = reused = 0
    for b in batches:
        if not len(b):
            continue
        first = float(b.arrival_s[0]) if first is None else first
        span = float(b.arrival_s[-1]) - first
        n += len(b)
        prompt, output = _grow_add(prompt, b.prompt_tokens), _grow_add(output, b.output_tokens)
        if b.has_blocks:
            fresh = np.unique(b.block_ids)
            fresh = fresh[~np.isin(fresh, seen, assume_unique=True)]
            occurrences += len(b.block_ids)
            reused += len(b.block_ids) - len(fresh)
            seen = np.union1d(seen, fresh)
    return {
        "requests": n,
        "span_s": span,
        "rate_rps": n / span if span > 0 else None,
        "prompt_tokens": _percentiles(prompt),
        "output_tokens": _percentiles(output),
        "has_prefix_blocks": occurrences > 0,
        "prefix_blocks": occurrences,
        "unique_prefix_blocks": len(seen),
        "prefix_reuse_fraction": reused / occurrences if occurrences else None,
    }
