"""A replica's engine steps, spooled to a file that `odhsim serve` turns into steps.parquet.

Why files and not an endpoint: a replica that the autoscaler stops, that crashes or that a fault kills mid-run
would take its steps with it if the gateway had to ask for them at the end; a file outlives the process (a crash
loses at most the last `FLUSH_S`), needs no new route behind the replica secret, and costs the serving path
nothing but one tuple appended to the engine's ring per step. `odhsim serve --out DIR` names a file per replica
(DIR/steps/<replica>.csv) in `$ODHSIM_STEPS_FILE`; without it the replica keeps only the bounded ring.

File format: a header line `# {json}` (model, replica, kind, kv_blocks_total, block_size) and then a CSV line per
step in odhsim.results.steps' field order with `time.monotonic()` start times (one clock for every process of the
machine), which the reader shifts to the run's start. A restarted replica of the same name appends a new header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from runtime.replica.backends import Backend
    from runtime.replica.config import ReplicaConfig

STEPS_FILE_ENV = "ODHSIM_STEPS_FILE"
FLUSH_S = 1.0
_LINE = "%.6f,%.6f" + ",%d" * 10 + "\n"
_FIELDS = 12
log = logging.getLogger(__name__)


class StepSpool:
    """Drains a backend's step ring into `path` every FLUSH_S and once more at close."""

    def __init__(self, path: Path, config: ReplicaConfig, replica: str) -> None:
        self.path, self.config, self.replica = path, config, replica
        self._rows: deque[tuple] | None = None
        self._file: Any = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, config: ReplicaConfig, replica: str, environ: Any = os.environ) -> StepSpool | None:
        value = environ.get(STEPS_FILE_ENV, "")
        return cls(Path(value), config, replica) if value else None

    def start(self, backend: Backend) -> None:
        """The backend is loaded: write the header and start draining its ring."""
        engine = getattr(backend, "engine", None)
        if engine is not None:  # the slot cache: max_model_len tokens per sequence, a token per block
            rows, total, block = engine.step_rows, engine.max_num_seqs * engine.max_model_len, 1
        else:
            rows, total, block = backend.batcher.step_rows, 0, 0  # type: ignore[union-attr]
        header = {"model": self.config.model, "replica": self.replica, "kind": self.config.kind,
                  "kv_blocks_total": total, "block_size": block}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._file.write("# " + json.dumps(header) + "\n")
        self._file.flush()
        self._rows = rows
        self._task = asyncio.create_task(self._run(), name="step-spool")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        rows = self._rows
        if rows is None or self._file is None or not rows:
            return
        lines = []
        while rows:
            lines.append(_LINE % rows.popleft())
        try:
            self._file.write("".join(lines))
            self._file.flush()
        except OSError as err:  # a full disk must not take the replica down: the steps are lost, and said so
            log.error("cannot write engine steps to %s: %s", self.path, err)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class SpoolError(ValueError):
    """A step file that cannot be read (names the file and line)."""


def read_spools(directory: str | Path, t0: float = 0.0) -> pd.DataFrame:
    """Every replica's step file under `directory` as one step table, times shifted by `t0` (the run's start on
    the monotonic clock). A last line cut short by a crash is skipped; anything else malformed is an error."""
    from odhsim.results.steps import StepLog

    steps = StepLog()
    for path in sorted(Path(directory).glob("*.csv")):
        src: int | None = None
        lines = path.read_text(encoding="utf-8").split("\n")
        last = len(lines) - 1  # the text after the final newline: empty unless the writer died mid-line
        for i, line in enumerate(lines):
            if not line:
                continue
            if line.startswith("# "):
                try:
                    h = json.loads(line[2:])
                    src = steps.source(h["model"], h["replica"], h["kind"], h["kv_blocks_total"], h["block_size"])
                except (ValueError, KeyError) as err:
                    raise SpoolError(f"{path}, line {i + 1}: bad step-file header: {err}") from None
                continue
            fields = line.split(",")
            if i == last and len(fields) != _FIELDS:
                break
            if src is None or len(fields) != _FIELDS:
                why = "a step before any header" if src is None else f"{len(fields)} fields, expected {_FIELDS}"
                raise SpoolError(f"{path}, line {i + 1}: {why}")
            try:
                row = (float(fields[0]) - t0, float(fields[1]), *(int(f) for f in fields[2:]))
            except ValueError as err:
                raise SpoolError(f"{path}, line {i + 1}: {err}") from None
            steps.append((src, *row))
    return steps.to_frame()
