"""`odhsim run` and `odhsim validate`: simulate a scenario, or check it without running."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from odhsim.cli_support import check_out_dir, check_seed, print_warnings
from odhsim.commands.output import (
    console,
    echo_json,
    err_console,
    frame_table,
    print_summary,
    report_unserved,
    scenario_warnings,
)
from odhsim.errors import OdhsimError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCENARIO = REPO_ROOT / "scenarios" / "default.yaml"


def run(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML (default: scenarios/default.yaml).")] = None,
    seed: Annotated[int | None, typer.Option(help="Root seed (overrides the scenario's).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write requests/replicas/timeseries/events.parquet + summary.json here.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    allow_empty: Annotated[
        bool, typer.Option(help="Exit 0 even when no model could serve (otherwise such a run exits 3).")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Simulate a scenario and print its summary (pooled and per model, with the SLOs used)."""
    from odhsim.scenario.load import load_scenario
    from odhsim.sim.run import simulate

    check_seed(seed)
    check_out_dir(out)
    path = scenario or DEFAULT_SCENARIO
    sc = load_scenario(path, set_)
    check_seed(sc.seed if seed is None else seed, "seed")
    print_warnings(err_console, scenario_warnings(sc))
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
        task = bar.add_task(escape(sc.name), total=None, now=0.0, arrived=0)

        def progress(now: float, horizon: float | None, arrived: int) -> None:
            bar.update(task, total=horizon, completed=min(now, horizon) if horizon else now, now=now, arrived=arrived)

        result = simulate(sc, seed=seed, progress=progress)
    if json_:
        echo_json(result.summary)
        print_warnings(err_console, result.summary.get("warnings"))
    else:
        print_summary(result.summary, f"{sc.name} (seed {result.seed})")
        from odhsim.commands.explain import print_anomalies

        print_anomalies(result.summary, result.events)
        if any(m.canary is not None for m in sc.models):
            from odhsim.results.summary import by_version

            console.print(frame_table(by_version(result.requests), "by model and version"))
    if out is not None:
        result.write(out)
        (err_console if json_ else console).print(escape(f"results written to {out}/"), highlight=False)
    report_unserved(result.summary.get("unserved_models") or {}, len(sc.models), allow_empty=allow_empty)


def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    engine: Annotated[
        str, typer.Option(help="Check for this engine too: sim (odhsim run) or live (odhsim serve).")
    ] = "sim",
) -> None:
    """Check a scenario file without running it (traces: header and first row)."""
    from odhsim.scenario.checks import live_refusals
    from odhsim.scenario.load import load_scenario

    if engine not in ("sim", "live"):
        raise OdhsimError(f"--engine must be sim or live, got {engine!r}")
    sc = load_scenario(scenario, set_, check_files=True)
    check_seed(sc.seed, "seed")
    refused = live_refusals(sc) if engine == "live" else []
    if refused:
        raise OdhsimError(f"{scenario}: the live engine cannot serve this scenario: " + "; ".join(refused))
    replicas = sum(m.replicas for m in sc.models)
    console.print(
        escape(f"{scenario}: ok ({sc.name}: {len(sc.models)} models, {replicas} replicas)"),
        highlight=False,
        soft_wrap=True,
    )
    print_warnings(err_console, scenario_warnings(sc))
