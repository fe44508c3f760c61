"""Engine step logs: one tidy table, the same for the simulator and the live runtime (`steps.parquet`).

A row is one engine step of an LLM replica (`kind` "llm": one forward pass that computes prompt chunks and/or one
token for every decoding sequence) or one dynamic batch of a fixed model (`kind` "fixed": one forward pass over
the requests batched together). Columns, defined identically for both engines:

- `time_s`: when the step started, seconds since the run's start (the simulator's clock; `odhsim serve`'s clock).
- `duration_s`: how long the step took (simulator: the latency model's time for its shape; live: wall time of the
  forward pass, scheduling and sampling included, from the step's start until its tokens were handed out).
- `model`, `replica`: the model and the replica (engine) that ran the step.
- `kind`: "llm" or "fixed".
- `batch_size`: sequences (LLM) or requests (fixed) in the step; for an LLM step prefill_seqs + decode_seqs.
- `prefill_tokens`: prompt tokens computed in the step (prefix-cache hits excluded; a preempted request's
  recomputed tokens included). 0 for fixed.
- `prefill_seqs`: sequences with a prompt chunk in the step. 0 for fixed.
- `prefill_attention_tokens`: sum over the step's prompt chunks of chunk tokens x the context the chunk ends at,
  the quadratic term of the latency model's prefill time. 0 for fixed.
- `decode_seqs`: sequences that decode one token in the step. 0 for fixed.
- `context_tokens`: sum of the decode sequences' context lengths (what a decode step reads from the KV cache, the
  latency model's per-context-token term). 0 for fixed.
- `kv_blocks_used`, `kv_blocks_total`, `block_size`: KV-cache blocks held once the step's slots are allocated,
  the replica's total, and tokens per block (the live tiny LM's slot cache counts a token as a block). 0 for fixed.
- `preemptions`: requests preempted (recompute) while the step was scheduled. 0 for fixed.
- `host_tokens`: prefix-cache tokens copied back from the host tier before the step (simulator only; 0 live).
- `input_rows`: tensor rows in a fixed model's batch (a request may carry several); 0 for LLM steps.

`StepLog` collects rows with O(1) appends (a tuple onto a list, moved into preallocated numpy columns every few
thousand rows) and whole decode spans at once (`llm_span`: the simulator jumps over k identical-shape steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("llm", "fixed")
_NUMERIC = (
    "time_s",
    "duration_s",
    "batch_size",
    "prefill_tokens",
    "prefill_seqs",
    "prefill_attention_tokens",
    "decode_seqs",
    "context_tokens",
    "kv_blocks_used",
    "preemptions",
    "host_tokens",
    "input_rows",
)
"""The numeric fields of a row, in the order `StepLog.append` takes them (after the source code)."""
COLUMNS = (
    "time_s",
    "duration_s",
    "model",
    "replica",
    "kind",
    "batch_size",
    "prefill_tokens",
    "prefill_seqs",
    "prefill_attention_tokens",
    "decode_seqs",
    "context_tokens",
    "kv_blocks_used",
    "kv_blocks_total",
    "block_size",
    "preemptions",
    "host_tokens",
    "input_rows",
)
"""steps.parquet's columns (before the run_id / seed / scenario tags a run result adds), in order."""
_FLUSH_ROWS = 4096


class StepLog:
    """The step rows of one run. Register each replica once (`source`), then `append` a row per step."""

    def __init__(self, capacity: int = _FLUSH_ROWS) -> None:
        self.sources: list[tuple[str, str, str, int, int]] = []  # (model, replica, kind, kv_blocks_total, block_size)
        self._pending: list[tuple] = []
        self._n = 0
        self._src = np.zeros(capacity, np.int32)
        self._cols = {name: np.zeros(capacity, np.float64 if name in ("time_s", "duration_s") else np.int64)
                      for name in _NUMERIC}  # fmt: skip

    def __len__(self) -> int:
        return self._n + len(self._pending)

    def source(self, model: str, replica: str, kind: str, kv_blocks_total: int = 0, block_size: int = 0) -> int:
        """The code of a replica's rows (its model, name, kind and KV geometry are stored once)."""
        if kind not in KINDS:
            raise ValueError(f"step kind must be one of {KINDS}, got {kind!r}")
        self.sources.append((model, replica, kind, int(kv_blocks_total), int(block_size)))
        return len(self.sources) - 1

    def append(self, row: tuple) -> None:
        """One step: (source, time_s, duration_s, batch_size, prefill_tokens, prefill_seqs,
        prefill_attention_tokens, decode_seqs, context_tokens, kv_blocks_used, preemptions, host_tokens,
        input_rows). O(1): the tuple waits in a list until a few thousand are moved into the columns."""
        pending = self._pending
        pending.append(row)
        if len(pending) >= _FLUSH_ROWS:
            self._flush()

    def fixed(self, src: int, time_s: float, duration_s: float, requests: int, input_rows: int = 0) -> None:
        """One dynamic batch of a fixed model."""
        self.append((src, time_s, duration_s, requests, 0, 0, 0, 0, 0, 0, 0, 0, input_rows))

    def llm_span(
        self,
        src: int,
        start_s: float,
        first_s: float,
        growth_s: float,
        batch: int,
        context: int,
        kv_used: np.ndarray,
        preemptions: int,
    ) -> None:
        """k = len(kv_used) consecutive pure-decode steps of an unchanged batch (the simulator's span): step j
        starts at start + j first + growth j(j-1)/2, takes first + growth j, and reads context + batch j tokens;
        `preemptions` belong to the first."""
        k = len(kv_used)
        if k == 0:
            return
        self._flush()
        self._grow(self._n + k)
        j = np.arange(k, dtype=np.float64)
        a, b = self._n, self._n + k
        c = self._cols
        self._src[a:b] = src
        c["time_s"][a:b] = start_s + j * first_s + growth_s * (j * (j - 1) / 2)
        c["duration_s"][a:b] = first_s + growth_s * j
        c["batch_size"][a:b] = batch
        c["decode_seqs"][a:b] = batch
        c["context_tokens"][a:b] = context + batch * np.arange(k, dtype=np.int64)
        c["kv_blocks_used"][a:b] = kv_used
        for name in ("prefill_tokens", "prefill_seqs", "prefill_attention_tokens", "host_tokens", "input_rows"):
            c[name][a:b] = 0
        c["preemptions"][a:b] = 0
        c["preemptions"][a] = preemptions
        self._n = b

    def _grow(self, need: int) -> None:
        cap = len(self._src)
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        src = np.zeros(new_cap, np.int32)
        src[: self._n] = self._src[: self._n]
        self._src = src
        for name, col in self._cols.items():
            grown = np.zeros(new_cap, col.dtype)
            grown[: self._n] = col[: self._n]
            self._cols[name] = grown

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        m = len(pending)
        self._grow(self._n + m)
        a, b = self._n, self._n + m
        fields = list(zip(*pending, strict=True))
        self._src[a:b] = fields[0]
        for name, values in zip(_NUMERIC, fields[1:], strict=True):
            self._cols[name][a:b] = values
        self._n = b

    def to_frame(self) -> pd.DataFrame:
        """The table (COLUMNS), rows in start-time order (stable: a replica's steps keep their order)."""
        import pandas as pd

        self._flush()
        n = self._n
        src = self._src[:n]
        order = np.argsort(self._cols["time_s"][:n], kind="stable")
        src = src[order]
        names = [s[0] for s in self.sources], [s[1] for s in self.sources], [s[2] for s in self.sources]
        data: dict[str, Any] = {}
        for name, col in self._cols.items():
            data[name] = col[:n][order]
        for i, name in enumerate(("model", "replica", "kind")):
            cats = list(dict.fromkeys(names[i])) if name != "kind" else list(KINDS)
            lookup = np.array([cats.index(v) for v in names[i]], dtype=np.int32)
            data[name] = pd.Categorical.from_codes(lookup[src] if n else np.zeros(0, np.int32), categories=cats)
        data["kv_blocks_total"] = np.array([s[3] for s in self.sources], np.int64)[src] if n else np.zeros(0, np.int64)
        data["block_size"] = np.array([s[4] for s in self.sources], np.int64)[src] if n else np.zeros(0, np.int64)
        return pd.DataFrame({name: data[name] for name in COLUMNS})


def empty_steps() -> pd.DataFrame:
    """A table with the step columns and no rows."""
    return StepLog(capacity=1).to_frame()


def write_steps(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a step table as Parquet (pyarrow), whole: a temporary file renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    tmp.replace(path)
    return path
