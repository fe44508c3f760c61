"""decisions.parquet's request ids as the clients numbered their requests: the gateway core records its own ticket
ids, a replay numbers its rows (and sends each as `x-request-id`), so a live run's decisions join its requests.parquet
as a simulated run's do. Used by `odhsim serve` when it writes its decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd


def client_request_id(value: str | None) -> int | None:
    """A client's `x-request-id` as a request number when it is one (a non-negative decimal integer written
    plainly, as the replay sends its rows' ids); None otherwise."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 18 or str(int(value)) != value:
        return None
    return int(value)


def with_client_ids(frame: pd.DataFrame, client_ids: dict[int, str]) -> tuple[pd.DataFrame, str]:
    """decisions.parquet's `request_id` as the clients numbered their requests, so a replay's requests.parquet
    joins it as a simulated run's does; (frame, "") when done. The cores record the gateway's ticket ids: those are
    replaced only when every recorded request came with an integer `x-request-id`. Otherwise every row keeps its
    ticket id (never a mix of the two numberings) and the note says why. A client's ids repeat when several
    replays share one serve; their time windows tell them apart (odhsim.fidelity.live.load_decisions)."""
    ids = frame["request_id"].to_numpy()
    tickets = np.unique(ids[ids >= 0])
    if len(tickets) == 0:
        return frame, ""
    mapped = {int(t): client_request_id(client_ids.get(int(t))) for t in tickets}
    odd = [int(t) for t, v in mapped.items() if v is None]
    if odd:
        example = client_ids.get(odd[0], "none")
        note = (
            f"decisions.parquet keeps the gateway's ticket ids in request_id: {len(odd)} of {len(tickets)} recorded "
            f"requests had no integer x-request-id (e.g. {example[:40]!r})"
        )
        return frame, note
    out = frame.copy()
    out["request_id"] = np.array([mapped[int(t)] if t >= 0 else -1 for t in ids], np.int64)
    return out, ""
