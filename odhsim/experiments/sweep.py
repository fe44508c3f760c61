"""Sweeps: every cell of a parameter grid x every seed is one job; results land as one Parquet dataset.

`--grid path=v1,v2` axes multiply (cartesian); `--zip path=v1,v2` axes advance together (all the same length) and
multiply with the grid as one axis. Paths are the ones `--set` understands, values YAML scalars. Seeds are the
scenario's seed + 0..N-1 (as `compare` does), so a sweep with `--seeds 1` reproduces `odhsim run`.

DIR/summary/<job id>.parquet holds one row per job (written to a hidden temp file, then renamed, so a killed sweep
never leaves half a file): the cell's parameters as columns named by their path, `seed`, `status` (ok / failed),
`error`, `job_id`, and every summary.json key (nested keys joined with dots, lists as JSON text). When the sweep
ends, files whose columns or types differ from the union are rewritten to it, so `pandas.read_parquet(DIR/summary)`
concatenates them. A rerun skips every job whose file exists (failed ones too, unless `retry_failed`).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from odhsim.errors import ScenarioError
from odhsim.experiments.executors import Executor, InlineExecutor, Outcome
from odhsim.experiments.jobs import Job, JobOutput, run_job
from odhsim.scenario.load import load_scenario
from odhsim.scenario.yaml_io import parse_path, safe_load

STATUS_OK, STATUS_FAILED = "ok", "failed"
SweepProgress = Callable[[Outcome | None, int, int], None]
"""progress(outcome or None at the start, jobs done, jobs to run)."""


def parse_axis(item: str, option: str = "--grid") -> tuple[str, list[Any]]:
    """'path=v1,v2' -> (path, [v1, v2]); values parse as YAML scalars (a quoted value may hold a comma)."""
    if "=" not in item:
        raise ScenarioError(f"{option} {item!r}: expected path=v1,v2,..., for example models[0].replicas=2,4")
    path, raw = (s.strip() for s in item.split("=", 1))
    parse_path(path)  # a bad path fails here, naming the option
    try:
        values = safe_load(f"[{raw}]")
    except yaml.YAMLError as err:
        raise ScenarioError(f"{option} {item!r}: values are not valid YAML ({err})") from None
    if not values:
        raise ScenarioError(f"{option} {item!r}: give at least one value")
    if any(isinstance(v, dict | list) for v in values):
        raise ScenarioError(f"{option} {item!r}: values must be scalars (numbers, strings, null)")
    return path, values


def sweep_cells(grid: Sequence[str] = (), zipped: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The cells: the cartesian product of the grid axes and (as one more axis) the zipped axes."""
    grid_axes = [parse_axis(g, "--grid") for g in grid]
    zip_axes = [parse_axis(z, "--zip") for z in zipped]
    paths = [p for p, _ in grid_axes + zip_axes]
    if "seed" in paths:
        raise ScenarioError("seed cannot be an axis: --seeds N runs every cell on the scenario's seed + 0..N-1")
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        raise ScenarioError(f"a path may be swept once, {', '.join(dup)} is given more than once")
    lengths = {len(v) for _, v in zip_axes}
    if len(lengths) > 1:
        shown = ", ".join(f"{p} ({len(v)})" for p, v in zip_axes)
        raise ScenarioError(f"--zip axes must have the same number of values: {shown}")
    zip_paths = [p for p, _ in zip_axes]
    zip_cells = [dict(zip(zip_paths, vals, strict=True)) for vals in zip(*[v for _, v in zip_axes], strict=True)]
    axes = [[{p: v} for v in vals] for p, vals in grid_axes] + ([zip_cells] if zip_cells else [])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def sweep_jobs(scenario: str | Path, cells: Sequence[dict[str, Any]], seeds: int) -> list[Job]:
    """One job per cell x seed; the seeds are the scenario's seed + 0..seeds-1. The scenario file is validated
    first (a broken file fails the sweep at once); a cell's bad value fails only that cell's jobs."""
    if seeds < 1:
        raise ScenarioError(f"--seeds must be at least 1, got {seeds}")
    base = load_scenario(scenario)
    return [Job(str(scenario), base.seed + i, tuple(cell.items())) for cell in cells or [{}] for i in range(seeds)]


@dataclass(frozen=True)
class SweepReport:
    """What a sweep did: jobs in all, skipped (their files existed), run now, failed now; the dataset folder."""

    total: int
    skipped: int
    ran: int
    failed: int
    out_dir: Path
    parameters: tuple[str, ...]


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists -> JSON text (a column type that stays the same whatever the length)."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def _param_kinds(cells: Sequence[dict[str, Any]]) -> dict[str, type]:
    """A column type per parameter that every cell's value fits: bool, int, float, else str."""
    kinds: dict[str, type] = {}
    for path in dict.fromkeys(p for c in cells for p in c):
        values = [c[path] for c in cells if c.get(path) is not None]
        if values and all(isinstance(v, bool) for v in values):
            kinds[path] = bool
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kinds[path] = int
        elif values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            kinds[path] = float
        else:
            kinds[path] = str
    return kinds


def summary_row(outcome: Outcome, kinds: dict[str, type]) -> dict[str, Any]:
    """One job's row: parameters, seed, status, error, job_id, then the flattened summary (a parameter's column
    wins over a summary key of the same name)."""
    job: Job = outcome.job
    row: dict[str, Any] = {p: (None if job.params.get(p) is None else kind(job.params[p])) for p, kind in kinds.items()}
    row.update(seed=int(job.seed), status=STATUS_OK if outcome.ok else STATUS_FAILED, error=outcome.error,
               job_id=job.job_id)  # fmt: skip
    if outcome.ok:
        output: JobOutput = outcome.result
        for key, value in flatten(output.summary).items():
            row.setdefault(key, value)
    return row


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a leading dot: the dataset reader ignores it
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _frame_table(rows: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(rows, preserve_index=False)


def write_requests(outcome: Outcome, kinds: dict[str, type], folder: Path) -> None:
    """DIR/requests/<job id>.parquet: the job's request table with job_id and the parameters as columns."""
    output: JobOutput = outcome.result
    if output.requests is None:
        return
    df = output.requests.copy()
    for col in df.columns:  # plain strings: categorical dictionaries differ between files
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(object)
    df.insert(0, "job_id", outcome.job.job_id)
    for p, kind in reversed(kinds.items()):
        v = outcome.job.params.get(p)
        df.insert(0, p, None if v is None else kind(v))
    _write_atomic(_frame_table(df), folder / f"{outcome.job.job_id}.parquet")


def unify_dataset(folder: Path) -> int:
    """Rewrite the files whose schema differs from the union of all (missing columns null, types promoted; a
    column whose types cannot be promoted becomes text). Returns how many files were rewritten."""
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return 0
    schemas = {f: pq.read_schema(f).remove_metadata() for f in files}
    fields: dict[str, pa.DataType] = {}
    for schema in schemas.values():
        for f in schema:
            if f.name not in fields or fields[f.name] == f.type:
                fields.setdefault(f.name, f.type)
                continue
            try:
                fields[f.name] = (
                    pa.unify_schemas(
                        [pa.schema([(f.name, fields[f.name])]), pa.schema([f])], promote_options="permissive"
                    )
                    .field(f.name)
                    .type
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                fields[f.name] = pa.large_string()
    union = pa.schema(list(fields.items()))
    rewritten = 0
    for path, schema in schemas.items():
        if schema.equals(union):
            continue
        table = pq.read_table(path)
        cols = [
            table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in union
        ]
        _write_atomic(pa.Table.from_arrays(cols, schema=union), path)
        rewritten += 1
    return rewritten


def _finished(folder: Path, retry_failed: bool) -> set[str]:
    done = set()
    for f in folder.glob("*.parquet"):
        if retry_failed and pq.read_table(f, columns=["status"]).column("status")[0].as_py() != STATUS_OK:
            continue
        done.add(f.stem)
    return done


def run_sweep(
    scenario: str | Path,
    *,
    grid: Sequence[str] = (),
    zipped: Sequence[str] = (),
    seeds: int = 1,
    out_dir: str | Path,
    executor: Executor | None = None,
    requests: bool = False,
    retry_failed: bool = False,
    progress: SweepProgress | None = None,
) -> SweepReport:
    """Run every cell x seed not already in `out_dir`, writing each job's row as it finishes."""
    cells = sweep_cells(grid, zipped)
    jobs = sweep_jobs(scenario, cells, seeds)
    kinds = _param_kinds(cells)
    out = Path(out_dir)
    summary_dir, requests_dir = out / "summary", out / "requests"
    summary_dir.mkdir(parents=True, exist_ok=True)
    if requests:
        requests_dir.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(
        json.dumps({"scenario": str(scenario), "grid": list(grid), "zip": list(zipped), "seeds": seeds,
                    "jobs": len(jobs)}, indent=2) + "\n", encoding="utf-8",
    )  # fmt: skip
    finished = _finished(summary_dir, retry_failed)
    todo = [j for j in jobs if j.job_id not in finished]
    ran = failed = 0
    if progress is not None:
        progress(None, 0, len(todo))
    if todo:
        fn = functools.partial(run_job, with_requests=requests)
        for outcome in (executor or InlineExecutor()).map(todo, fn):
            row = pd.DataFrame([summary_row(outcome, kinds)])
            if requests and outcome.ok:
                write_requests(outcome, kinds, requests_dir)
            _write_atomic(_frame_table(row), summary_dir / f"{outcome.job.job_id}.parquet")
            ran += 1
            failed += not outcome.ok
            if progress is not None:
                progress(outcome, ran, len(todo))
    unify_dataset(summary_dir)
    if requests:
        unify_dataset(requests_dir)
    return SweepReport(len(jobs), len(jobs) - len(todo), ran, failed, out, tuple(kinds))
