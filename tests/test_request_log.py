"""RequestLog keeps finished outcomes in batches (speed); what readers see must be what row-by-row writes give."""

from __future__ import annotations

import math

import numpy as np

from odhsim.results import request_log
from odhsim.results.record import RequestRecord
from odhsim.results.request_log import RequestLog
from odhsim.results.status import STATUS_FAILED, STATUS_OK, STATUS_UNFINISHED
from odhsim.workload.schema import RequestBatch


def _log(n: int) -> RequestLog:
    log = RequestLog(capacity=4)  # grows while outcomes are pending
    batch = RequestBatch.from_columns(
        arrival_s=np.arange(n, dtype=np.float64),
        prompt_tokens=np.full(n, 10),
        output_tokens=np.full(n, 5),
    )
    assert log.append_batch(batch) == 0
    return log


def test_outcomes_pending_and_flushed_read_as_written_in_finish_order() -> None:
    n = 3 * request_log._FLUSH_ROWS + 7  # three full flushes and a pending tail
    log = _log(n)
    rng = np.random.default_rng(5)
    order = rng.permutation(n)
    want_finish = np.full(n, np.nan)
    want_replica = np.full(n, -1)
    for k, row in enumerate(order[: n - 3].tolist()):
        rec = RequestRecord(row=row, start_s=row + 0.25, first_token_s=row + 0.5, replica=k % 3, attempts=1)
        version = log.version_code(f"v{k % 2 + 1}")
        log.finish(rec, row + 1.0, STATUS_OK if k % 2 else STATUS_FAILED, "" if k % 2 else f"why {k % 4}", version)
        want_finish[row] = row + 1.0
        want_replica[row] = k % 3
        if k == 5:  # a reader in the middle sees the outcomes finished so far
            assert log.column("finish_s")[order[:6]].tolist() == [float(r) + 1.0 for r in order[:6]]
    frame = log.to_frame(["m"], ["t"], ["r0", "r1", "r2"])
    assert len(frame) == n
    np.testing.assert_array_equal(frame["finish_s"].to_numpy(), want_finish)
    np.testing.assert_array_equal(log.column("replica"), want_replica)
    never = order[n - 3 :]
    assert (frame["status"].iloc[never] == STATUS_UNFINISHED).all()
    assert frame["reason"].iloc[order[0]] == "why 0" and frame["reason"].iloc[order[1]] == ""
    assert math.isclose(frame["start_s"].iloc[order[2]], order[2] + 0.25)
    assert frame["version"].iloc[order[0]] == "v1" and frame["version"].iloc[order[1]] == "v2"


def test_a_row_finished_twice_keeps_its_last_outcome() -> None:
    log = _log(4)
    log.finish(RequestRecord(row=2, replica=0), 1.0, STATUS_FAILED, "first")
    log.finish(RequestRecord(row=2, replica=1, retries=1, attempts=2), 2.0, STATUS_OK)
    assert log.column("finish_s")[2] == 2.0 and log.column("replica")[2] == 1 and log.column("attempts")[2] == 2
    frame = log.to_frame(["m"], ["t"], ["r0", "r1"])
    assert frame["status"].iloc[2] == STATUS_OK and frame["reason"].iloc[2] == ""
