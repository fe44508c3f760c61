"""The columnar request batch every loader, generator and transform produces and the simulator consumes.

Why columnar: the 2024 Azure traces hold 27 M rows, so nothing builds one Python object per row up front.
Loaders yield `RequestBatch` chunks (numpy arrays, one element per request); the simulator turns a request
into a small Python object only when it arrives, and drops it when it finishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from policies.flowcontrol.priority import PRIORITY_CLASSES  # the one definition; `priority` indexes it

__all__ = ["NO_SESSION", "PRIORITY_CLASSES", "RequestBatch", "concat"]


NO_SESSION = -1


@dataclass(frozen=True, eq=False)
class RequestBatch:
    """A chunk of requests sorted by arrival time.

    Columns (all the same length n):
      arrival_s      float64  seconds since the start of the trace
      prompt_tokens  int64    input (context) tokens
      output_tokens  int64    tokens to generate (>= 1)
      model          int32    index into the scenario's model list (0 when the trace has one model)
      priority       int8     index into PRIORITY_CLASSES
      tenant         int32    index into the scenario's tenant list
      session        int64    session id, NO_SESSION (-1) when none
    Prefix blocks (ragged, CSR layout): the blocks of request i are
      block_ids[block_offsets[i]:block_offsets[i+1]]; ids name one prefix block each (Mooncake's hash_ids).
      block_offsets has n+1 elements; both arrays are empty-but-valid when the trace has no block ids.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    model: np.ndarray
    priority: np.ndarray
    tenant: np.ndarray
    session: np.ndarray
    block_offsets: np.ndarray
    block_ids: np.ndarray
    source: str = field(default="")

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("prompt_tokens", "output_tokens", "model", "priority", "tenant", "session"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RequestBatch column {name} has {len(getattr(self, name))} rows, expected {n}")
        if len(self.block_offsets) != n + 1:
            raise ValueError("RequestBatch.block_offsets must have n+1 elements")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def has_blocks(self) -> bool:
        return len(self.block_ids) > 0

    def blocks_of(self, i: int) -> np.ndarray:
        return self.block_ids[self.block_offsets[i] : self.block_offsets[i + 1]]

    @staticmethod
    def from_columns(
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        *,
        model: np.ndarray | None = None,
        priority: np.ndarray | None = None,
        tenant: np.ndarray | None = None,
        session: np.ndarray | None = None,
        block_offsets: np.ndarray | None = None,
        block_ids: np.ndarray | None = None,
        source: str = "",
    ) -> RequestBatch:
        """Build a batch, filling absent columns with defaults (model 0, priority normal, tenant 0, no session)."""
        n = len(arrival_s)
        return RequestBatch(
            arrival_s=np.asarray(arrival_s, dtype=np.float64),
            prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
            output_tokens=np.asarray(output_tokens, dtype=np.int64),
            model=np.zeros(n, np.int32) if model is None else np.asarray(model, np.int32),
            priority=(
                np.full(n, PRIORITY_CLASSES.index("normal"), np.int8)
                if priority is None
                else np.asarray(priority, np.int8)
            ),
            tenant=np.zeros(n, np.int32) if tenant is None else np.asarray(tenant, np.int32),
            session=np.full(n, NO_SESSION, np.int64) if session is None else np.asarray(session, np.int64),
            block_offsets=(np.zeros(n + 1, np.int64) if block_offsets is None else np.asarray(block_offsets, np.int64)),
            block_ids=np.zeros(0, np.int64) if block_ids is None else np.asarray(block_ids, np.int64),
            source=source,
        )

    def take(self, index: np.ndarray) -> RequestBatch:
        """Rows at `index` (an integer or boolean array), keeping their prefix blocks."""
        idx = np.arange(len(self))[index] if np.asarray(index).dtype == bool else np.asarray(index, np.int64)
        starts, ends = self.block_offsets[idx], self.block_offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if self.has_blocks and offsets[-1] > 0:
            gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
            ids = self.block_ids[gather]
        else:
            ids = np.zeros(0, np.int64)
        return replace(
            self,
            arrival_s=self.arrival_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            model=self.model[idx],
            priority=self.priority[idx],
            tenant=self.tenant[idx],
            session=self.session[idx],
            block_offsets=offsets,
            block_ids=ids,
        )

    def with_columns(self, **columns: np.ndarray) -> RequestBatch:
        return replace(self, **columns)


def concat(batches: Iterable[RequestBatch]) -> RequestBatch:
    """One batch from many (in the given order); used by tests and by small in-memory workloads."""
    parts = list(batches)
    if not parts:
        return RequestBatch.from_columns(np.zeros(0), np.zeros(0), np.zeros(0))
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for b in parts:
        offsets.append(b.block_offsets[1:] + base)
        base += int(b.block_offsets[-1])
    return RequestBatch(
        arrival_s=np.concatenate([b.arrival_s for b in parts]),
        prompt_tokens=np.concatenate([b.prompt_tokens for b in parts]),
        output_tokens=np.concatenate([b.output_tokens for b in parts]),
        model=np.concatenate([b.model for b in parts]),
        priority=np.concatenate([b.priority for b in parts]),
        tenant=np.concatenate([b.tenant for b in parts]),
        session=np.concatenate([b.session for b in parts]),
        block_offsets=np.concatenate(offsets),
        block_ids=np.concatenate([b.block_ids for b in parts]) if base else np.zeros(0, np.int64),
        source=parts[0].source,
    )
