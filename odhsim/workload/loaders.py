"""Streaming trace loaders (Azure 2023/2024 CSV, Mooncake JSON lines, plain CSV) yielding `RequestBatch`es.

Why streaming: the 2024 Azure traces hold 27 M rows, so files are read `chunk_rows` rows at a time and parsed
with vectorised pandas/numpy; no Python object per row is kept. Arrival times are seconds since the trace's
first (kept) request. Token counts of 0 are clamped to 1 (every request reads and writes at least one token)
and counted in `stats.clamped`; negative counts and counts above MAX_TOKENS (10 M) are errors. Malformed rows
raise `TraceError` naming the file and the 1-based line, or with on_error="skip" are dropped and counted in
`stats.skipped`. Rows must be in time order (ties allowed): a trace that goes back in time always raises, naming
the offending line. Opening a trace reads its header and first data row only: missing columns and a file without
requests are errors at once.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from odhsim.errors import TraceError
from odhsim.workload._traceutil import (
    AZURE_COLUMNS,
    MAX_TOKENS,
    PLAIN_COLUMNS,
    Checker,
    TraceStats,
    detect_format,
    has_data_row,
    int_column,
    mooncake_row,
    name_column,
    read_header,
    shown,
    summarize,
)
from odhsim.workload.schema import NO_SESSION, PRIORITY_CLASSES, RequestBatch

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake prefix block: each of a request's hash_ids names one 512-token block."""
DEFAULT_CHUNK_ROWS = 65_536
FORMATS = ("azure2023", "azure2024", "mooncake", "csv")
TraceFormat = Literal["auto", "azure2023", "azure2024", "mooncake", "csv"]
OnError = Literal["raise", "skip"]
__all__ = ["MOONCAKE_BLOCK_TOKENS", "TraceReader", "TraceStats", "open_trace", "summarize", "trace_info"]
_ATTRS = ("model", "priority", "tenant", "session")
_BAD_LINE = re.compile(r"line (\d+)")


@dataclass
class _Pass:
    """State of one pass over a file, so two passes over one reader cannot disturb each other."""

    stats: TraceStats = field(default_factory=TraceStats)
    first: Any = None
    last: tuple[Any, int] | None = None
    traces: set[str] = field(default_factory=set)


class TraceReader:
    """A re-iterable trace: each `batches()` call reopens the file and refreshes `stats`."""

    def __init__(
        self,
        path: str | Path,
        format: TraceFormat = "auto",
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        on_error: OnError = "raise",
        trace_filter: str | None = None,
        model_names: Sequence[str] | None = None,
        tenant_names: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TraceError(f"{self.path}: trace file not found")
        if format != "auto" and format not in FORMATS:
            raise TraceError(f"{self.path}: unknown trace format {format!r}; known: {', '.join(FORMATS)}")
        if on_error not in ("raise", "skip") or chunk_rows < 1:
            raise ValueError("on_error must be 'raise' or 'skip' and chunk_rows >= 1")
        self.format = detect_format(self.path) if format == "auto" else format
        self.chunk_rows, self.on_error, self.trace_filter = chunk_rows, on_error, trace_filter
        self.model_names, self.tenant_names = model_names, tenant_names
        self.block_tokens = MOONCAKE_BLOCK_TOKENS if self.format == "mooncake" else None
        self.stats = TraceStats()
        self._header = [] if self.format == "mooncake" else read_header(self.path)
        self._check_start()
        usable = {"model": model_names is not None, "tenant": tenant_names is not None}
        provided = {c for c in _ATTRS if c in self._header and usable.get(c, True)}
        if self.format != "csv":
            provided = {"blocks"} if self.format == "mooncake" else set()
        self.provides: frozenset[str] = frozenset(provided)
        """Request columns taken from the file (attribute assignment leaves them alone)."""

    def _check_start(self) -> None:
        """Cheap checks at open (header and first data row only): required columns, and at least one request,
        so a header-only file is an error rather than a run of 0 requests."""
        if self.format != "mooncake":
            need = AZURE_COLUMNS if self.format != "csv" else PLAIN_COLUMNS
            missing = [c for c in need if c not in self._header]
            if missing:
                raise TraceError(f"{self.path} line 1: missing column(s) {missing}; found {self._header}")
            if self.trace_filter is not None and "trace" not in self._header:
                raise TraceError(f"{self.path}: trace_filter given but the file has no 'trace' column")
        if not has_data_row(self.path, json_lines=self.format == "mooncake"):
            after = " after its header" if self._header else ""
            raise TraceError(f"{self.path}: no requests: the file has no data rows{after}")

    @property
    def skipped(self) -> int:
        return self.stats.skipped

    @property
    def skipped_lines(self) -> list[int]:
        return self.stats.skipped_lines

    def batches(self) -> Iterator[RequestBatch]:
        st = _Pass()
        self.stats = st.stats
        yield from (self._json_chunks(st) if self.format == "mooncake" else self._csv_chunks(st))
        if self.trace_filter is not None and st.stats.rows == 0:
            raise TraceError(f"{self.path}: no rows with trace == {self.trace_filter!r}; found {sorted(st.traces)}")

    def token_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """All prompt and output token counts (one pass), e.g. to resample lengths from."""
        parts = [(b.prompt_tokens, b.output_tokens) for b in self.batches()]
        return (
            np.concatenate([p for p, _ in parts] or [np.zeros(0, np.int64)]),
            np.concatenate([o for _, o in parts] or [np.zeros(0, np.int64)]),
        )

    # --- CSV ------------------------------------------------------------------------------------------------
    def _csv_chunks(self, st: _Pass) -> Iterator[RequestBatch]:
        azure = self.format != "csv"
        # Every column is read (no usecols), so pandas rejects rows with too many fields, not ignores them.
        dtypes = {c: str for c in ("TIMESTAMP", "trace", "model", "tenant", "priority") if c in self._header}
        reader = pd.read_csv(
            self.path,
            dtype=dtypes,
            chunksize=self.chunk_rows,
            skip_blank_lines=False,
            encoding_errors="replace",
            on_bad_lines="warn" if self.on_error == "skip" else "error",
        )
        bad_lines: list[int] = []  # lines pandas dropped (wrong field count), in file order
        rows_seen = 0
        with reader:
            while True:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        df = next(reader)
                except StopIteration:
                    break
                except (pd.errors.ParserError, ValueError) as e:
                    m = _BAD_LINE.search(str(e))
                    where = f" line {m.group(1)}" if m else ""
                    raise TraceError(f"{self.path}{where}: malformed CSV ({str(e).strip()})") from None
                new_bad = [int(n) for w in caught for n in re.findall(r"Skipping line (\d+)", str(w.message))]
                if new_bad:
                    st.stats.skip(new_bad)
                    bad_lines.extend(new_bad)
                rows = np.arange(rows_seen, rows_seen + len(df), dtype=np.int64) + 2
                rows_seen += len(df)
                shift = np.asarray(bad_lines, np.int64) - np.arange(len(bad_lines))
                lines = rows + np.searchsorted(shift, rows, side="right")
                blank = df.isna().all(axis=1).to_numpy()
                if "trace" in df:
                    st.traces.update(df["trace"].dropna().unique()[:20].tolist())
                    if self.trace_filter is not None:
                        blank = blank | (df["trace"] != self.trace_filter).to_numpy()
                if blank.any():
                    df, lines = df[~blank], lines[~blank]
                if len(df):
                    yield self._csv_batch(st, df, lines, azure)

    def _csv_batch(self, st: _Pass, df: pd.DataFrame, lines: np.ndarray, azure: bool) -> RequestBatch:
        chk = Checker(lines)
        if azure:
            raw = df["TIMESTAMP"]
            ts = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
            chk.flag(ts.isna().to_numpy(), lambda i: f"TIMESTAMP {raw.iloc[i]!r} is not a timestamp")
            key = ts.dt.tz_convert(None).to_numpy("datetime64[ns]").view(np.int64)
            per_second, (p, o) = 1e9, ("ContextTokens", "GeneratedTokens")
        else:
            num = pd.to_numeric(df["arrival_s"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
            chk.flag(~np.isfinite(num), lambda i: f"arrival_s {shown(df['arrival_s'].iloc[i])} is not a finite number")
            key, per_second, (p, o) = num, 1.0, ("prompt_tokens", "output_tokens")
        extra = {
            "prompt_tokens": int_column(chk, df[p], p, MAX_TOKENS),
            "output_tokens": int_column(chk, df[o], o, MAX_TOKENS),
        }
        if "model" in self.provides:
            extra["model"] = name_column(chk, df["model"], "model", self.model_names or ())
        if "tenant" in self.provides:
            extra["tenant"] = name_column(chk, df["tenant"], "tenant", self.tenant_names or ())
        if "priority" in self.provides:
            extra["priority"] = name_column(chk, df["priority"].str.strip(), "priority", PRIORITY_CLASSES)
        if "session" in self.provides:
            s = df["session"]
            extra["session"] = int_column(chk, s.fillna(0), "session")
            extra["session"][s.isna().to_numpy()] = NO_SESSION  # a blank session cell means "no session"
        return self._finish(st, key, per_second, lines, chk, **extra)

    # --- Mooncake JSON lines --------------------------------------------------------------------------------
    def _json_chunks(self, st: _Pass) -> Iterator[RequestBatch]:
        opener: Any = gzip.open if self.path.name.endswith(".gz") else open
        cols: tuple[list[Any], ...] = ([], [], [], [], [])  # timestamp, input, output, hash_ids, line
        with opener(self.path, "rt", encoding="utf-8", errors="replace") as f:
            for lineno, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = mooncake_row(text)
                except ValueError as e:
                    if self.on_error == "raise":
                        raise TraceError(f"{self.path} line {lineno}: {e}") from None
                    st.stats.skip([lineno])
                    continue
                for c, v in zip(cols, (*row, lineno), strict=True):
                    c.append(v)
                if len(cols[0]) >= self.chunk_rows:
                    yield self._json_batch(st, cols)
                    cols = ([], [], [], [], [])
        if cols[0]:
            yield self._json_batch(st, cols)

    def _json_batch(self, st: _Pass, cols: tuple[list[Any], ...]) -> RequestBatch:
        ts, inp, out, hashes, lines = cols
        offsets = np.zeros(len(ts) + 1, np.int64)
        np.cumsum([len(h) for h in hashes], out=offsets[1:])
        ids = np.fromiter((x for h in hashes for x in h), np.int64, count=int(offsets[-1]))
        kw = {"prompt_tokens": inp, "output_tokens": out, "block_offsets": offsets, "block_ids": ids}
        return self._finish(st, np.asarray(ts, np.float64), 1e3, np.asarray(lines, np.int64), None, **kw)

    # --- common ---------------------------------------------------------------------------------------------
    def _finish(
        self, st: _Pass, key: np.ndarray, per_second: float, lines: np.ndarray, chk: Checker | None, **columns: Any
    ) -> RequestBatch:
        """Drop or report bad rows, check time order, re-base to the first request, clamp zero tokens."""
        chk = chk or Checker(lines)
        if chk.first is not None and self.on_error == "raise":
            raise TraceError(f"{self.path} line {chk.first[0]}: {chk.first[1]}")
        batch = RequestBatch.from_columns(np.zeros(len(key)), source=self.path.name, **columns)
        if chk.bad.any():
            st.stats.skip(lines[chk.bad])
            good = ~chk.bad
            batch, key, lines = batch.take(good), key[good], lines[good]
        if len(key) == 0:
            return batch
        prev_key = np.empty_like(key)
        prev_key[1:] = key[:-1]
        prev_key[0] = key[0] if st.last is None else st.last[0]
        back = key < prev_key
        if back.any():
            i = int(np.argmax(back))
            prev_line = int(lines[i - 1]) if i else st.last[1]  # type: ignore[index]
            hint = (
                f"; the file mixes traces {sorted(st.traces)}: pass trace_filter"
                if len(st.traces) > 1 and self.trace_filter is None
                else "; sort the trace by time first"
            )
            raise TraceError(f"{self.path} line {lines[i]}: arrival time is earlier than line {prev_line}'s{hint}")
        if st.first is None:
            st.first = key[0]
        st.last = (key[-1], int(lines[-1]))
        arrival = (key - st.first).astype(np.float64) / per_second
        zero = (batch.prompt_tokens == 0) | (batch.output_tokens == 0)
        st.stats.clamped += int(zero.sum())
        st.stats.rows += len(key)
        return batch.with_columns(
            arrival_s=arrival,
            prompt_tokens=np.maximum(batch.prompt_tokens, 1),
            output_tokens=np.maximum(batch.output_tokens, 1),
        )


def open_trace(path: str | Path, format: TraceFormat = "auto", **kw: Any) -> TraceReader:
    """Open a trace for streaming; see `TraceReader` for the options."""
    return TraceReader(path, format, **kw)


def trace_info(path: str | Path, **kw: Any) -> dict[str, Any]:
    """One streaming pass over a trace file: `summarize` plus format, block size and skipped/clamped rows."""
    reader = open_trace(path, **kw)
    info = {"path": str(reader.path), "format": reader.format, **summarize(reader.batches())}
    info.update(
        block_tokens=reader.block_tokens,
        skipped=reader.stats.skipped,
        skipped_lines=list(reader.stats.skipped_lines),
        clamped=reader.stats.clamped,
    )
    return info
