"""The `odhsim` command line: run, validate, traces, profiles, bench."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from odhsim.errors import OdhsimError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = REPO_ROOT / "scenarios" / "default.yaml"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="odhsim: simulate and compare ML-serving policies.")
traces_app = typer.Typer(no_args_is_help=True, help="Inspect and download traces.")
profiles_app = typer.Typer(no_args_is_help=True, help="GPU latency profiles.")
app.add_typer(traces_app, name="traces")
app.add_typer(profiles_app, name="profiles")

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print an OdhsimError's message (it names the file, line or field) and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OdhsimError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


SUMMARY_ROWS = (
    "requests", "completed", "shed", "failed", "timeout", "in_flight_at_stop", "ttft_p50_s", "ttft_p99_s",
    "tpot_p50_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps", "output_tokens_per_s", "goodput_rps",
    "slo_attainment", "prefix_cache_hit_rate", "preemptions", "gpu_hours", "cost_usd", "wall_s",
    "sim_requests_per_wall_s",
)  # fmt: skip


def print_summary(summary: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_ROWS:
        if key in summary:
            table.add_row(key, _fmt(summary[key]))
    console.print(table)


@app.command()
@user_errors
def run(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML (default: scenarios/default.yaml).")] = None,
    seed: Annotated[int | None, typer.Option(help="Root seed (overrides the scenario's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write requests/replicas/timeseries/events.parquet + summary.json here.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Simulate a scenario and print its summary."""
    from odhsim.scenario import load_scenario
    from odhsim.sim.run import simulate

    path = scenario or DEFAULT_SCENARIO
    sc = load_scenario(path, set_)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("sim {task.fields[now]:>9.1f} s"),
        TextColumn("{task.fields[arrived]:>9,} requests"),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task(sc.name, total=None, now=0.0, arrived=0)

        def progress(now: float, horizon: float | None, arrived: int) -> None:
            bar.update(task, total=horizon, completed=min(now, horizon) if horizon else now, now=now, arrived=arrived)

        result = simulate(sc, seed=seed, progress=progress)
    print_summary(result.summary, f"{sc.name} (seed {result.seed})")
    if out is not None:
        result.write(out)
        console.print(f"results written to {out}/")


@app.command()
@user_errors
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
) -> None:
    """Check a scenario file without running it."""
    from odhsim.scenario import load_scenario

    sc = load_scenario(scenario, set_)
    replicas = sum(m.replicas for m in sc.models)
    console.print(f"{scenario}: ok ({sc.name}: {len(sc.models)} models, {replicas} replicas)")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
