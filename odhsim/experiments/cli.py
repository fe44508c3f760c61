"""`odhsim sweep SCENARIO --grid path=v1,v2 ... --seeds N --out DIR`: a parameter sweep on an executor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from odhsim.cli_support import check_out_dir, make_console, to_json
from odhsim.errors import OdhsimError

console = make_console()
err_console = make_console(stderr=True)


def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML every cell starts from.")],
    out: Annotated[Path, typer.Option(help="Folder of the dataset: OUT/summary/ (and OUT/requests/).")],
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="path=v1,v2,...: an axis; grid axes multiply (cartesian).")
    ] = None,
    zip_: Annotated[
        list[str] | None, typer.Option("--zip", help="path=v1,v2,...: axes that advance together (same lengths).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per cell: the scenario's seed + 0..N-1.")] = 1,
    executor: Annotated[str, typer.Option(help="inline, local (process pool) or ray.")] = "local",
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPU count).")] = None,
    address: Annotated[
        str | None, typer.Option(help="--executor ray: an existing cluster, e.g. ray://raycluster-head:10001.")
    ] = None,
    requests: Annotated[bool, typer.Option("--requests", help="Per-request tables to OUT/requests/.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Rerun jobs recorded as failed.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Every grid cell x seed is one job; one Parquet row per job in OUT/summary/; a rerun skips finished jobs."""
    try:
        _sweep(scenario, out, grid or [], zip_ or [], seeds, executor, workers, address, requests, retry_failed, json_)
    except OdhsimError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _sweep(
    scenario: Path,
    out: Path,
    grid: list[str],
    zipped: list[str],
    seeds: int,
    executor: str,
    workers: int | None,
    address: str | None,
    requests: bool,
    retry_failed: bool,
    json_: bool,
) -> None:
    from odhsim.experiments.executors import Outcome, make_executor
    from odhsim.experiments.sweep import run_sweep, sweep_cells

    check_out_dir(out)
    sweep_cells(grid, zipped)  # bad axes fail before any worker starts
    n_workers = 1 if executor == "inline" else workers or os.cpu_count() or 1
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("jobs"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    failures: list[str] = []
    with make_executor(executor, workers=n_workers, address=address) as ex, Progress(
        *columns, console=err_console, transient=True
    ) as bar:  # fmt: skip
        task = bar.add_task(f"sweep ({ex.name}, {ex.workers} workers)", total=None)

        def progress(outcome: Outcome | None, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if outcome is not None and not outcome.ok:
                failures.append(f"{outcome.job.params} seed {outcome.job.seed}: {outcome.error}")

        report = run_sweep(scenario, grid=grid, zipped=zipped, seeds=seeds, out_dir=out, executor=ex,
                           requests=requests, retry_failed=retry_failed, progress=progress)  # fmt: skip
    data = {"jobs": report.total, "skipped": report.skipped, "ran": report.ran, "failed": report.failed,
            "summary": str(out / "summary"), "parameters": list(report.parameters)}  # fmt: skip
    if json_:
        typer.echo(to_json(data))
        return
    console.print(
        escape(f"{report.total} jobs: {report.ran} ran ({report.failed} failed), {report.skipped} already done"),
        highlight=False,
    )
    for text in failures[:10]:
        err_console.print(f"[red]failed:[/] {escape(text)}", highlight=False, soft_wrap=True)
    if len(failures) > 10:
        err_console.print(escape(f"... and {len(failures) - 10} more failed jobs (column `error`)"), highlight=False)
    console.print(
        escape(f"dataset: {out / 'summary'} (pandas.read_parquet opens it; one row per job)"),
        highlight=False,
        soft_wrap=True,
    )
